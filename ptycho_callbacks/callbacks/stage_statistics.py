"""`StageStatistics`: statistics of every stage of the data path, logged during training.

The intensity-bias report follows the amplitude along PtychoPINN's data path
(raw diffraction -> grouped -> normalized -> container X -> prediction ->
truth). This callback measures those stages while `model.fit` runs, writes
them to TensorBoard and keeps the latest values in the run's `RunRecord`.
The statistics themselves come from `ptycho_callbacks.stats`.
"""

import numpy as np
import tensorflow as tf

from .. import stats
from ..stages import (NO_VALUES, check_values, histogram_values, parse_stages, phase_reason, refuse_complex_amplitude,
                      side_by_side)
from .base import PeriodicCallback, summary_value
from .probe_inputs import batch_size, check_probe_inputs, layer_output, probe_batch, symbolic_dtype, to_numpy

_SCALAR_STATS = ("mean", "std", "min", "max", "count", "nan_count", "inf_count")
_BIAS_STATS = ("mean", "median", "p05", "p95", "mae", "rmse", "max_abs", "count")


class StageStatistics(PeriodicCallback):
    """Logs statistics of the named stages of the data path, and the prediction's bias.

    Each stage is an array (the raw diffraction, the grouped diffraction, the
    normalized X, ...), a layer of the model evaluated on a small fixed probe
    batch, or a callable `fn(model) -> array`. At the start of training and
    every `every_n_epochs` epochs the callback computes
    `ptycho_callbacks.stats.array_stats` of every stage (complex values by
    their modulus |x|), the ratios of consecutive stage means and the
    normalization invariant (the product of those ratios should be 1), and
    writes them to TensorBoard under `<log_dir>/ptycho/train`:

    - `stages/<name>/mean|std|min|max|count|nan_count|inf_count` (scalars;
      mean/std/min/max over finite values, left out when there is none),
    - `stages/<name>` (histogram of the finite values, when `histograms`;
      an array stage's histogram is written once, at the first evaluation),
    - `stages/ratio/<from>_to_<to>` (mean of `to` / mean of `from`),
    - `stages/invariant/chain_product` and `stages/invariant/deviation`
      (`|product - 1|`).

    With `truth`, the prediction (`prediction_output` evaluated on the probe
    batch) is compared with it: `bias/amplitude/<stat>` from
    `stats.amplitude_bias(|pred|, |truth|)` (`mean`, `median`, `p05`, `p95`,
    `mae`, `rmse`, `max_abs`, `count`, `pearson_r`), `bias/phase/<stat>` from
    `stats.phase_bias(angle(pred), angle(truth))` (same without pearson_r),
    `bias/scaling/<mode>` (the candidate scalars of `stats.scaling_stats`) and
    the images `images/amplitude` and `images/phase`: prediction | truth side
    by side for the first `max_images` samples (first channel), each side
    min-max scaled to [0, 1] on its own (the scalars carry the scale).

    Undefined values (None in `stats`) are never written: TensorBoard gets
    no NaN from this callback. The step of every summary is the number of
    completed epochs: the start of training is step `initial_epoch` (0 for a
    fresh fit), the end of epoch index `e` is step `e + 1`. When the last
    epoch is not a multiple of `every_n_epochs` it is logged at train end.

    The record is updated at each evaluation: `record.stages` is replaced by
    the latest `{"name", "label", "source", "stats"}` of every stage in the
    given order, `record.prediction` by `{"scaling", "amplitude_bias",
    "phase_bias"}`. Naming stages `prediction` and `truth` (after the input
    stages) gives the report its "Normalized -> prediction" and
    "Prediction -> truth" ratios.

    What depends on the data is a finding, not an error (recorded once per
    fit, shown in the report, printed as one line when `verbose`):
    `stage_nonfinite` (a stage holds NaN/Inf: its mean/std/min/max cover the
    finite values only), `truth_nonfinite` and `truth_zeros` (the ratio
    statistics skip those pixels; all of them undefined gives `n/a`),
    `phase_not_compared` (a real truth for a complex prediction, or the
    reverse: amplitudes are compared, the phase bias is `n/a`) and
    `stage_invalid` (an `fn` stage returned no usable array after train
    begin: its statistics are `n/a`).

    Args:
        stages: ordered list of stage specs. A spec is a dict with `name`
            (letters, digits, `_`, `.`, `-`), optional `label` (human name)
            and `source` (where the data comes from), and exactly one of
            `array` (a numpy array; its statistics are computed once at train
            begin), `layer` (name of a model layer, evaluated on
            `probe_inputs`) or `fn` (a callable `fn(model)` returning an
            array, called at each evaluation). A tuple `(name, label, source,
            array)`, as `SimulatedData.stages()` returns, or `(name, array)`
            is accepted too. Complex values are summarised by their modulus,
            except that the stages named `container_X`, `prediction` and
            `truth` must be real: the report reads them as diffraction
            amplitudes.
        probe_inputs: a small fixed batch of model inputs (dict by input name,
            or list), needed by `layer` stages and by `truth`. Keep it small
            (a few samples): it is evaluated at every logging epoch.
        truth: ground-truth complex object for the probe batch: as many
            samples as `probe_inputs` and the shape of the `prediction_output`
            layer's output (a real truth compares amplitudes only).
        prediction_output: name of the layer whose output is the prediction
            compared with `truth` (PtychoPINN's complex object `trimmed_obj`).
        every_n_epochs: log every this many epochs (and at train begin).
        histograms: write histograms.
        images: write prediction/truth images (needs `truth`).
        max_images: at most this many samples per image summary.
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        log_dir: run directory when `run` is None; None writes nothing (the
            record is filled).
        verbose: 1 prints each finding as one line, 0 keeps them in the record.

    Raises:
        ValueError: at construction for a malformed spec (duplicate name,
            none or several of array/layer/fn, empty, non-numeric or
            (for an amplitude stage) complex array, missing probe_inputs),
            non-numeric or empty probe_inputs or truth, or a truth whose
            number of samples differs from the probe batch's; at train begin,
            before any training step, for an unknown layer name, probe_inputs
            that do not fit the model's inputs (missing input, other shape,
            complex for a real input), an amplitude stage whose layer or `fn`
            gives complex values, or a prediction whose shape differs from
            `truth`. OSError at construction for a `log_dir` that cannot be
            written.

    Example:

    ```python
    data = simulate(N=64, gridsize=2)
    probe = {key: value[:4] for key, value in data.model_inputs().items()}
    stages = data.stages() + [
        {"name": "prediction", "label": "Prediction", "layer": "pred_amplitude"},
        {"name": "truth", "label": "Truth", "array": data.truth_diffraction},
    ]
    callback = StageStatistics(stages, probe_inputs=probe, truth=data.truth_object[:4],
                               every_n_epochs=5, log_dir="runs/gs2_base")
    model.fit(data.model_inputs(), data.model_targets(), epochs=50,
              callbacks=[callback])
    callback.record.stages[-2]["stats"]["mean"]   # mean predicted amplitude
    ```
    """

    def __init__(self, stages, probe_inputs=None, truth=None, prediction_output="trimmed_obj",
                 every_n_epochs=1, histograms=True, images=True, max_images=3, run=None, log_dir=None,
                 verbose=1):
        parsed = parse_stages(stages)
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
            raise ValueError(f"max_images must be an integer >= 0, got {max_images!r}")
        if not isinstance(prediction_output, str) or not prediction_output:
            raise ValueError(f"prediction_output must be a layer name, got {prediction_output!r}")
        needs_probe = [s.name for s in parsed if s.kind == "layer"]
        if truth is not None:
            needs_probe.append("truth")
        if probe_inputs is None and needs_probe:
            raise ValueError(
                f"probe_inputs is required to evaluate {', '.join(repr(n) for n in needs_probe)} "
                "(a small batch of model inputs)")
        super().__init__(every_n_epochs, run=run, log_dir=log_dir)
        self.stages = parsed
        self.probe_inputs = probe_batch(probe_inputs) if probe_inputs is not None else None
        self.truth = check_values("truth", truth, "the ground truth") if truth is not None else None
        if self.truth is not None and (self.truth.ndim == 0
                                       or self.truth.shape[0] != batch_size(self.probe_inputs)):
            raise ValueError(
                f"truth has shape {self.truth.shape} but probe_inputs holds {batch_size(self.probe_inputs)} "
                "sample(s): give the ground truth of the probe batch (its first axis is the sample axis)")
        self.verbose = verbose
        self.prediction_output = prediction_output
        self.histograms = bool(histograms)
        self.images = bool(images)
        self.max_images = max_images
        self._static = {}
        self._static_histograms = {}
        self._reported = set()
        self._phase_reason = None

    def prepare(self):
        self._reported = set()
        if self.probe_inputs is not None:
            check_probe_inputs(self.model, self.probe_inputs)
        self._check_probe_layers()
        if self.truth is not None:
            self._note_truth()
        arrays = [s for s in self.stages if s.kind == "array"]
        self._static = {s.name: stats.array_stats(s.value) for s in arrays}
        # An array does not change: its histogram goes into the first evaluation only.
        self._static_histograms = {s.name: self._histogram(s.value) for s in arrays}

    # --- evaluation --------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        self.run.probe.declare([name for name, _ in self._wanted_layers()])

    def _wanted_layers(self):
        """[(layer name, where)] of the layers this callback evaluates on the probe batch."""
        wanted = [(s.value, f"stage {s.name!r}") for s in self.stages if s.kind == "layer"]
        if self.truth is not None:
            wanted.append((self.prediction_output, "prediction_output"))
        return wanted

    def _check_probe_layers(self):
        """Every layer this callback evaluates exists, and gives what its stage can hold: before any step."""
        wanted = self._wanted_layers()
        if not wanted:
            return
        model = self.model
        if not getattr(model, "inputs", None):
            raise ValueError(
                "StageStatistics evaluates layers through a functional sub-model; the model "
                f"{getattr(model, 'name', model)!r} has no symbolic inputs (subclassed model?): use 'fn' stages")
        dtypes = {name: symbolic_dtype(layer_output(model, name, where)) for name, where in wanted}
        for stage in self.stages:
            if stage.kind == "layer":
                refuse_complex_amplitude(stage.name, f"the output of layer {stage.value!r}", dtypes[stage.value])
        if self.truth is not None:
            self._phase_reason = phase_reason(dtypes[self.prediction_output], self.truth.dtype,
                                              self.prediction_output)

    def _run_probe(self):
        names = list(dict.fromkeys(name for name, _ in self._wanted_layers()))
        if not names:
            return {}
        return self.run.probe.evaluate(self.model, self.probe_inputs, self.global_step, names,
                                       where="StageStatistics")

    def _histogram(self, values):
        return histogram_values(values) if self.histograms else NO_VALUES

    def evaluate(self):
        """Everything one evaluation measures (the record is updated here)."""
        layer_values = self._run_probe()
        stage_results = []
        for stage in self.stages:
            if stage.kind == "array":
                stage_stats = self._static[stage.name]
                hist = self._static_histograms.pop(stage.name, NO_VALUES)
            else:
                values = layer_values[stage.value] if stage.kind == "layer" else self._fn_values(stage)
                stage_stats, hist = stats.array_stats(values), self._histogram(values)
            stage_results.append((stage, stage_stats, hist))
            self._report_nonfinite(stage, stage_stats)
        transitions = stats.stage_ratios([(s.name, st["mean"]) for s, st, _ in stage_results])
        invariant = stats.invariant_check(transitions)
        self.record.stages = [
            {"name": s.name, "label": s.label, "source": s.source, "stats": st}
            for s, st, _ in stage_results
        ]
        result = {"stages": stage_results, "transitions": transitions, "invariant": invariant,
                  "prediction": None, "images": None}
        if self.truth is not None:
            result.update(self._compare_with_truth(layer_values[self.prediction_output]))
        return result

    def _fn_values(self, stage):
        """The array an `fn` stage returns; after train begin a bad one is a finding and no values."""
        try:
            return check_values(f"stage {stage.name!r}", to_numpy(stage.value(self.model)),
                                 "the array returned by fn(model)", stage_name=stage.name)
        except ValueError as error:
            if self.completed_epochs is None:  # train begin: refuse before any training step
                raise
            self._announce_once(("invalid", stage.name), "warning", "stage_invalid",
                                f"{error} {self._when()}; its statistics are n/a for this evaluation.",
                                f"your fn for stage {stage.name!r}")
            return NO_VALUES

    def _compare_with_truth(self, pred):
        truth = self.truth
        if pred.shape != truth.shape:
            raise ValueError(
                f"the prediction ({self.prediction_output!r} on probe_inputs) has shape {pred.shape} "
                f"but truth has shape {truth.shape}; give the ground truth of the probe batch")
        pred_amp, truth_amp = np.abs(pred), np.abs(truth)
        if self._phase_reason is None:
            pred_phase, truth_phase = np.angle(pred), np.angle(truth)
            phase_bias = stats.phase_bias(pred_phase, truth_phase)
        else:
            phase_bias = stats.undefined_bias(self._phase_reason)
        prediction = {
            "scaling": stats.scaling_stats(pred_amp, truth_amp),
            "amplitude_bias": stats.amplitude_bias(pred_amp, truth_amp),
            "phase_bias": phase_bias,
        }
        self.record.prediction = prediction
        self.run.arrays.update(prediction=pred, truth=truth, prediction_step=self.global_step)  # the figures
        images = None
        if self.images and self.max_images > 0:
            images = {"amplitude": side_by_side(pred_amp, truth_amp, self.max_images)}
            if self._phase_reason is None:
                images["phase"] = side_by_side(pred_phase, truth_phase, self.max_images)
        return {"prediction": prediction, "images": images}

    # --- findings ----------------------------------------------------------

    def _when(self):
        if self.completed_epochs is None:
            return "at train begin"
        return f"after epoch {self.completed_epochs - 1} (step {self.global_step})"

    def _announce_once(self, key, level, code, message, look_at):
        if key not in self._reported:
            self._reported.add(key)
            self.announce(level, code, message, look_at)

    def _note_truth(self):
        """Findings about the ground truth itself: known at train begin, before any step."""
        truth = self.truth
        where = "report.md §Prediction ↔ Truth Scaling and §Amplitude Bias"
        nonfinite = truth.size - int(np.count_nonzero(np.isfinite(truth)))
        if nonfinite:
            self._announce_once("truth_nonfinite", "warning", "truth_nonfinite",
                                f"truth holds {nonfinite} NaN/Inf pixel(s) of {truth.size} at train begin; "
                                "the prediction-vs-truth statistics skip them.", where)
        zeros = int(np.count_nonzero(truth == 0))
        if zeros == truth.size:
            self._announce_once("truth_zeros", "warning", "truth_zeros",
                                f"truth is 0 at all {truth.size} pixels at train begin: the truth/prediction "
                                "ratios and the best scalar are n/a; is it the right array?", where)
        elif zeros:
            self._announce_once("truth_zeros", "info", "truth_zeros",
                                f"truth is 0 at {zeros} of {truth.size} pixels at train begin; the "
                                "truth/prediction ratio statistics skip them (MAE and RMSE count them).", where)
        if self._phase_reason is not None:
            self._announce_once("phase", "info", "phase_not_compared",
                                f"{self._phase_reason} (seen at train begin): amplitudes are compared, the "
                                "phase bias is n/a.", "report.md §Phase Bias")

    def _report_nonfinite(self, stage, stage_stats):
        nan, inf = stage_stats["nan_count"], stage_stats["inf_count"]
        if nan or inf:
            self._announce_once(
                ("nonfinite", stage.name), "warning", "stage_nonfinite",
                f"stage {stage.name!r} ({stage.label}) holds {nan} NaN and {inf} infinite value(s) of "
                f"{stage_stats['count']} {self._when()}; its mean, std, min and max cover the "
                f"{stage_stats['finite_count']} finite value(s) only.",
                f"TensorBoard stages/{stage.name}/nan_count and report.md §Normalization Stage Stats")

    # --- writing -----------------------------------------------------------

    def publish(self, result, step):
        with self.run.summaries("train") as writer:
            if writer is None:
                return
            for stage, stage_stats, hist in result["stages"]:
                for key in _SCALAR_STATS:
                    _scalar(f"stages/{stage.name}/{key}", stage_stats.get(key), step)
                if hist.size:
                    tf.summary.histogram(f"stages/{stage.name}", hist, step=step)
            for transition in result["transitions"]:
                _scalar(f"stages/ratio/{transition['name']}", transition["ratio"], step)
            _scalar("stages/invariant/chain_product", result["invariant"]["product"], step)
            _scalar("stages/invariant/deviation", result["invariant"]["deviation"], step)
            prediction = result["prediction"]
            if prediction is not None:
                for key in _BIAS_STATS + ("pearson_r",):
                    _scalar(f"bias/amplitude/{key}", prediction["amplitude_bias"].get(key), step)
                for key in _BIAS_STATS:
                    _scalar(f"bias/phase/{key}", prediction["phase_bias"].get(key), step)
                for candidate in prediction["scaling"]["candidates"]:
                    _scalar(f"bias/scaling/{candidate['mode']}", candidate["value"], step)
            for kind, images in (result["images"] or {}).items():
                if images is not None:
                    tf.summary.image(f"images/{kind}", images, step=step, max_outputs=self.max_images)
            writer.flush()


def _scalar(tag, value, step):
    """Writes a finite scalar; None and non-finite values (also after float32 rounding) are skipped."""
    value = stats.finite_or_none(value)
    if value is not None and np.isfinite(summary_value(value)):
        tf.summary.scalar(tag, summary_value(value), step=step)
