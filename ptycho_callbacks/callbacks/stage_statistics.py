"""`StageStatistics`: statistics of every stage of the data path, logged during training.

The intensity-bias report follows the amplitude along PtychoPINN's data path
(raw diffraction -> grouped -> normalized -> container X -> prediction ->
truth). This callback measures those stages while `model.fit` runs, writes
them to TensorBoard and keeps the latest values in the run's `RunRecord`.
The statistics themselves come from `ptycho_callbacks.stats`.
"""

import difflib
import math
import re

import numpy as np
import tensorflow as tf

from .. import stats
from .._keras import keras
from ..record import CONTAINER_STAGE, PREDICTION_STAGE, TRUTH_STAGE
from .base import RecordingCallback, summary_value
from .probe_inputs import batch_size, check_probe_inputs, probe_batch, symbolic_dtype, to_numpy

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_NAMES = ("ratio", "invariant")
_SOURCE_KEYS = ("array", "layer", "fn")
_SPEC_KEYS = {"name", "label", "source", *_SOURCE_KEYS}
_SCALAR_STATS = ("mean", "std", "min", "max", "count", "nan_count", "inf_count")
_BIAS_STATS = ("mean", "median", "p05", "p95", "mae", "rmse", "max_abs", "count")

AMPLITUDE_STAGES = (CONTAINER_STAGE, PREDICTION_STAGE, TRUTH_STAGE)
"""Stage names the report reads as real diffraction amplitudes: complex values are refused."""

HISTOGRAM_MAX_VALUES = 1_000_000
"""At most this many values (an even stride through the array) go into one histogram."""

_NO_VALUES = np.zeros(0)


def _refuse_complex_amplitude(stage_name, what, dtype):
    if np.dtype(dtype).kind == "c" and stage_name in AMPLITUDE_STAGES:
        raise ValueError(
            f"stage {stage_name!r}: {what} is complex ({dtype}), but the report reads {stage_name!r} as a "
            "real diffraction amplitude (its mean enters the stage ratios); pass the amplitude "
            "(np.abs of the complex field), or give a complex object as truth= to compare with the prediction")


def _check_values(where, values, what, stage_name=None):
    """`values` as a numpy array; ValueError naming `where` when empty, not numeric, or
    complex for a stage the report reads as an amplitude."""
    array = stats.numeric_array(values, f"{where}: {what}", allow_empty=False)
    _refuse_complex_amplitude(stage_name, what, array.dtype)
    return array


def _histogram_values(array):
    """Finite values of `array` (of |array| when complex) for a histogram, subsampled if huge."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > HISTOGRAM_MAX_VALUES:
        flat = flat[::math.ceil(flat.size / HISTOGRAM_MAX_VALUES)]
    if np.iscomplexobj(flat):
        flat = np.abs(flat)
    flat = flat.astype(np.float64)
    return flat[np.isfinite(flat)]


def _as_list(outputs):
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def _display(panel):
    """A 2-D panel scaled to [0, 1] (min-max over its finite values; non-finite pixels are 0)."""
    panel = np.asarray(panel, dtype=np.float64)
    finite = np.isfinite(panel)
    out = np.zeros_like(panel)
    if finite.any():
        low, high = panel[finite].min(), panel[finite].max()
        if high > low:
            out[finite] = (panel[finite] - low) / (high - low)
    return out


def _side_by_side(pred, truth, max_images):
    """(k, H, 2W + 1, 1) float32 images: prediction | truth of the first channel of k samples."""
    def panels(a):
        a = np.asarray(a)
        if a.ndim == 4:
            a = a[..., 0]
        elif a.ndim == 2:
            a = a[None]
        elif a.ndim != 3:
            return None
        return a[:max_images]

    pred, truth = panels(pred), panels(truth)
    if pred is None or truth is None or pred.shape[0] == 0:
        return None
    images = []
    for p, t in zip(pred, truth):
        gap = np.ones((p.shape[0], 1))
        images.append(np.concatenate([_display(p), gap, _display(t)], axis=1))
    return np.stack(images)[..., None].astype(np.float32)


class _Stage:
    """One validated stage spec."""

    def __init__(self, name, label, source, kind, value):
        self.name, self.label, self.source, self.kind, self.value = name, label, source, kind, value


def _parse_stage(spec, index):
    if isinstance(spec, (tuple, list)):
        if len(spec) == 4:
            name, label, source, array = spec
        elif len(spec) == 2:
            (name, array), label, source = spec, None, None
        else:
            raise ValueError(
                f"stage #{index}: a tuple spec must be (name, array) or (name, label, source, array), "
                f"got {len(spec)} items")
        spec = {"name": name, "label": label, "source": source, "array": array}
    if not isinstance(spec, dict):
        raise ValueError(f"stage #{index}: a spec must be a dict or a tuple, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"stage #{index}: 'name' must be a non-empty string of letters, digits, '_', '.' or '-' "
            f"(it becomes a TensorBoard tag), got {name!r}")
    if name in _RESERVED_NAMES:
        raise ValueError(f"stage {name!r}: the names {_RESERVED_NAMES} are reserved for the ratio tags")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"stage {name!r}: unknown key(s) {unknown}; a spec holds 'name', 'label', 'source' and "
            "exactly one of 'array', 'layer', 'fn'")
    given = [key for key in _SOURCE_KEYS if spec.get(key) is not None]
    if len(given) != 1:
        found = f"got {given}" if given else "got none"
        raise ValueError(f"stage {name!r}: give exactly one of 'array', 'layer' or 'fn' ({found})")
    kind = given[0]
    value = spec[kind]
    if kind == "array":
        value = _check_values(f"stage {name!r}", value, "the array", stage_name=name)
    elif kind == "layer":
        if not isinstance(value, str) or not value:
            raise ValueError(f"stage {name!r}: 'layer' must be a layer name (a string), got {value!r}")
    elif not callable(value):
        raise ValueError(f"stage {name!r}: 'fn' must be callable as fn(model), got {type(value).__name__}")
    label, source = spec.get("label"), spec.get("source")
    for key, text in (("label", label), ("source", source)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"stage {name!r}: {key!r} must be a string, got {type(text).__name__}")
    return _Stage(name, label or name, source, kind, value)


class StageStatistics(RecordingCallback):
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
        log_dir: run directory; None writes nothing (the record is filled).
        record: the `RunRecord` to fill; a new one if None.
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
                 every_n_epochs=1, histograms=True, images=True, max_images=3, log_dir=None,
                 record=None, verbose=1):
        if isinstance(stages, dict) or not isinstance(stages, (list, tuple)):
            raise ValueError(f"stages must be a list of stage specs, got {type(stages).__name__}")
        parsed = [_parse_stage(spec, index) for index, spec in enumerate(stages)]
        seen = set()
        for stage in parsed:
            if stage.name in seen:
                raise ValueError(f"stage {stage.name!r} is registered twice; stage names must be unique")
            seen.add(stage.name)
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
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
        super().__init__(log_dir=log_dir, record=record)
        self.stages = parsed
        self.probe_inputs = probe_batch(probe_inputs) if probe_inputs is not None else None
        self.truth = _check_values("truth", truth, "the ground truth") if truth is not None else None
        if self.truth is not None and (self.truth.ndim == 0
                                       or self.truth.shape[0] != batch_size(self.probe_inputs)):
            raise ValueError(
                f"truth has shape {self.truth.shape} but probe_inputs holds {batch_size(self.probe_inputs)} "
                "sample(s): give the ground truth of the probe batch (its first axis is the sample axis)")
        self.verbose = verbose
        self.prediction_output = prediction_output
        self.every_n_epochs = every_n_epochs
        self.histograms = bool(histograms)
        self.images = bool(images)
        self.max_images = max_images
        self._probe_fn = None
        self._probe_layers = []
        self._static = {}
        self._static_histograms = {}
        self._pending = None
        self._completed = None
        self._last_step = None
        self._reported = set()
        self._phase_reason = None

    # --- Keras hooks -------------------------------------------------------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._completed = None
        self._last_step = None
        self._reported = set()
        if self.probe_inputs is not None:
            check_probe_inputs(self.model, self.probe_inputs)
        self._build_probe_model()
        if self.truth is not None:
            self._note_truth()
        arrays = [s for s in self.stages if s.kind == "array"]
        self._static = {s.name: stats.array_stats(s.value) for s in arrays}
        # An array does not change: its histogram goes into the first evaluation only.
        self._static_histograms = {s.name: self._histogram(s.value) for s in arrays}
        # Evaluated now (errors surface before any training step); written at
        # the first epoch's start, whose index is the number of completed epochs.
        self._pending = self._evaluate()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._pending is not None:
            self._write(self._pending, step=epoch)
            self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._completed = epoch + 1
        if (epoch + 1) % self.every_n_epochs == 0:
            self._write(self._evaluate(), step=epoch + 1)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        try:
            if self._pending is not None:
                self._write(self._pending, step=0)
                self._pending = None
            if self._completed is not None and self._last_step != self._completed:
                self._write(self._evaluate(), step=self._completed)
        finally:
            self.release_writers()

    def get_config(self):
        config = super().get_config()
        config.update({
            "stages": [
                {"name": s.name, "label": s.label, "source": s.source, "kind": s.kind,
                 **({"layer": s.value} if s.kind == "layer" else {})}
                for s in self.stages
            ],
            "probe_batch_size": batch_size(self.probe_inputs) if self.probe_inputs is not None else None,
            "has_truth": self.truth is not None,
            "prediction_output": self.prediction_output,
            "every_n_epochs": self.every_n_epochs,
            "histograms": self.histograms,
            "images": self.images,
            "max_images": self.max_images,
        })
        return config

    # --- evaluation --------------------------------------------------------

    def _layer_output(self, model, layer_name, where):
        try:
            layer = model.get_layer(layer_name)
        except (ValueError, KeyError):
            names = [layer.name for layer in model.layers]
            close = difflib.get_close_matches(layer_name, names, n=3, cutoff=0.6)
            shown = (close + [n for n in names if n not in close])[:8]
            more = f", ... ({len(names)} layers)" if len(names) > len(shown) else ""
            hint = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
            raise ValueError(
                f"{where}: the model {model.name!r} has no layer named {layer_name!r}; {hint}"
                f"available layer names: {', '.join(shown)}{more}") from None
        try:
            output = layer.output
        except (AttributeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{where}: layer {layer_name!r} has no single output to evaluate "
                f"(is it used more than once in the model?): {error}") from None
        outputs = _as_list(output)
        if len(outputs) != 1:
            raise ValueError(f"{where}: layer {layer_name!r} has {len(outputs)} outputs; "
                             "register a layer with one output, or use 'fn'")
        return outputs[0]

    def _build_probe_model(self):
        """One sub-model, built per fit, with every layer this callback evaluates as outputs."""
        self._probe_fn, self._probe_layers = None, []
        wanted = [(s.value, f"stage {s.name!r}") for s in self.stages if s.kind == "layer"]
        if self.truth is not None:
            wanted.append((self.prediction_output, "prediction_output"))
        if not wanted:
            return
        model = self.model
        if not getattr(model, "inputs", None):
            raise ValueError(
                "StageStatistics evaluates layers through a functional sub-model; the model "
                f"{getattr(model, 'name', model)!r} has no symbolic inputs (subclassed model?): use 'fn' stages")
        outputs = []
        for layer_name, where in wanted:
            if layer_name in self._probe_layers:
                continue
            outputs.append(self._layer_output(model, layer_name, where))
            self._probe_layers.append(layer_name)
        dtypes = {name: symbolic_dtype(output) for name, output in zip(self._probe_layers, outputs)}
        for stage in self.stages:
            if stage.kind == "layer":
                _refuse_complex_amplitude(stage.name, f"the output of layer {stage.value!r}", dtypes[stage.value])
        if self.truth is not None:
            self._phase_reason = _phase_reason(dtypes[self.prediction_output], self.truth.dtype,
                                               self.prediction_output)
        probe_model = keras.Model(model.inputs, outputs, name="stage_statistics_probe")
        if getattr(model, "run_eagerly", False):
            self._probe_fn = lambda inputs: probe_model(inputs, training=False)
        else:
            # Traced once per fit; an eager call of a functional model costs ~100 ms on a CPU.
            self._probe_fn = tf.function(lambda inputs: probe_model(inputs, training=False))

    def _run_probe(self):
        if self._probe_fn is None:
            return {}
        outputs = _as_list(self._probe_fn(self.probe_inputs))
        return {name: to_numpy(value) for name, value in zip(self._probe_layers, outputs)}

    def _histogram(self, values):
        return _histogram_values(values) if self.histograms else _NO_VALUES

    def _evaluate(self):
        """Everything one evaluation measures (the record is updated here)."""
        layer_values = self._run_probe()
        stage_results = []
        for stage in self.stages:
            if stage.kind == "array":
                stage_stats = self._static[stage.name]
                hist = self._static_histograms.pop(stage.name, _NO_VALUES)
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
            return _check_values(f"stage {stage.name!r}", to_numpy(stage.value(self.model)),
                                 "the array returned by fn(model)", stage_name=stage.name)
        except ValueError as error:
            if self._completed is None:  # train begin: refuse before any training step
                raise
            self._announce_once(("invalid", stage.name), "warning", "stage_invalid",
                                f"{error} {self._when()}; its statistics are n/a for this evaluation.",
                                f"your fn for stage {stage.name!r}")
            return _NO_VALUES

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
        images = None
        if self.images and self.max_images > 0:
            images = {"amplitude": _side_by_side(pred_amp, truth_amp, self.max_images)}
            if self._phase_reason is None:
                images["phase"] = _side_by_side(pred_phase, truth_phase, self.max_images)
        return {"prediction": prediction, "images": images}

    # --- findings ----------------------------------------------------------

    def _when(self):
        if self._completed is None:
            return "at train begin"
        return f"after epoch {self._completed - 1} (step {self.global_step})"

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

    def _write(self, result, step):
        self._last_step = step
        writer = self.writer()
        if writer is None:
            return
        with writer.as_default():
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


def _phase_reason(prediction_dtype, truth_dtype, prediction_output):
    """Why the phase cannot be compared (a real prediction or truth), or None when both are complex."""
    if np.dtype(prediction_dtype).kind == "c" and np.dtype(truth_dtype).kind == "c":
        return None
    if np.dtype(prediction_dtype).kind == "c":
        return f"truth is real ({truth_dtype}) while the prediction {prediction_output!r} is complex"
    return f"the prediction {prediction_output!r} is real ({prediction_dtype}): no phase to compare"


def _scalar(tag, value, step):
    """Writes a finite scalar; None and non-finite values (also after float32 rounding) are skipped."""
    value = stats.finite_or_none(value)
    if value is not None and np.isfinite(summary_value(value)):
        tf.summary.scalar(tag, summary_value(value), step=step)
