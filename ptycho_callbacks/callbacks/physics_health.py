"""`PhysicsHealth`: the photon budget and the Poisson NLL's early warnings on a probe batch."""

import numpy as np
import tensorflow as tf

from .. import physics, stats
from .base import PeriodicCallback, summary_value
from .probe_inputs import layer_output, probe_batch

AMPLITUDE_LAYER_NAMES = ("amp_head", "amp")
"""Amplitude-head layer names looked for when none is given: the stand-in's, then PtychoPINN's."""


def _activation_name(layer):
    """Name of the layer's activation (Keras `activation`, or PtychoPINN's `activation_name`), or None."""
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None) or getattr(layer, "activation_name", None)
    return name if isinstance(name, str) else None


class PhysicsHealth(PeriodicCallback):
    """Logs the photon budget and the early warnings of a Poisson-NLL NaN on a fixed probe batch.

    At the start of training and every `every_n_epochs` epochs (and at
    train end, when the last epoch was not logged) the model is evaluated on
    `probe_inputs` and three measures are computed with
    `ptycho_callbacks.physics`:

    - the photon budget: per pattern `sum_xy pred_intensity / sum_xy
      probe_counts` (mean, p05, p95): 1 when the model conserves photons;
    - the fraction of predicted intensities `<= 0`, where the Poisson NLL's
      `log` is -Inf or NaN;
    - the amplitude head's saturation fraction: outputs within
      `physics.SATURATION_TOLERANCE` of a bound of its activation (for a
      ReLU head, the dead outputs).

    They are written to TensorBoard (`physics/photon_budget/mean|p05|p95`,
    `physics/nonpositive_fraction`, `physics/saturation_fraction`; the step
    is the number of completed epochs, so a fit from `initial_epoch` goes on
    where the last one stopped; undefined values are not written) and
    appended to `record.physics` as `{"epoch", "step", "photon_budget",
    "nonpositive_fraction", "saturation_fraction"}` (`step` is the global
    optimizer step, which the report compares with a NaN event's to say
    which measure moved before the failure).

    Args:
        probe_inputs: a small fixed batch of model inputs (dict by input
            name, or list). Keep it small: it is evaluated at every logging
            epoch.
        probe_counts: the measured intensities of that batch, in the units of
            the model's `pred_intensity` output: its training target
            `(intensity_scale * X)**2` (see `ptycho_callbacks.physics`).
        every_n_epochs: evaluate every this many epochs (and at train begin).
        intensity_output: name of the layer giving the predicted intensity.
        amplitude_layer: name of the amplitude head's layer; None looks for
            `AMPLITUDE_LAYER_NAMES` and leaves the saturation out when none
            exists.
        amplitude_range: `(low, high)` bounds of the head's activation (None
            for unbounded); by default from its activation's name
            (`physics.ACTIVATION_RANGES`).
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        log_dir: run directory when `run` is None; None writes no TensorBoard data.

    Raises:
        ValueError: at construction for an empty probe batch or counts that
            are not numeric; at train begin for an unknown layer name or
            counts whose shape differs from the predicted intensity.

    Example:

    ```python
    data = simulate(N=64, gridsize=2)
    probe = {key: value[:8] for key, value in data.model_inputs().items()}
    counts = data.model_targets()["pred_intensity"][:8]
    health = PhysicsHealth(probe, counts, every_n_epochs=5, log_dir="runs/gs2_base")
    model.fit(data.model_inputs(), data.model_targets(), epochs=50, callbacks=[health])
    health.record.physics[-1]["photon_budget"]["mean"]
    ```
    """

    def __init__(self, probe_inputs, probe_counts, every_n_epochs=1, intensity_output="pred_intensity",
                 amplitude_layer=None, amplitude_range=None, run=None, log_dir=None):
        counts = np.asarray(probe_counts)
        if counts.dtype.kind not in "iuf" or counts.ndim == 0 or counts.shape[0] == 0:
            raise ValueError(f"probe_counts must be a non-empty real array, got dtype {counts.dtype}, "
                             f"shape {counts.shape}")
        if amplitude_range is not None and len(amplitude_range) != 2:
            raise ValueError(f"amplitude_range must be (low, high), got {amplitude_range!r}")
        super().__init__(every_n_epochs, run=run, log_dir=log_dir)
        self.probe_inputs = probe_batch(probe_inputs)
        self.probe_counts = counts
        self.intensity_output = intensity_output
        self.amplitude_layer = amplitude_layer
        self.amplitude_range = tuple(amplitude_range) if amplitude_range is not None else None
        self._outputs = []
        self._range = (None, None)
        self._range_reason = None

    # --- evaluation --------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        self.run.probe.declare([self.intensity_output] + ([self._amplitude_head_name()] if self._amplitude_head_name()
                                                          else []))

    def _amplitude_head_name(self):
        if self.amplitude_layer is not None:
            return self.amplitude_layer
        present = {layer.name for layer in getattr(self.model, "layers", [])}
        return next((name for name in AMPLITUDE_LAYER_NAMES if name in present), None)

    def prepare(self):
        head_name = self._amplitude_head_name()
        self._outputs = [self.intensity_output] + ([head_name] if head_name else [])
        for name in self._outputs:
            layer_output(self.model, name, "PhysicsHealth")
        if head_name is not None:
            activation = _activation_name(self.model.get_layer(head_name))
            self._range = self.amplitude_range or physics.ACTIVATION_RANGES.get(activation, (None, None))
            self._range_reason = f"bounds of activation {activation!r} unknown: pass amplitude_range"
        else:
            self._range = (None, None)
            self._range_reason = f"no amplitude layer (looked for {', '.join(AMPLITUDE_LAYER_NAMES)})"

    def evaluate(self):
        values = self.run.probe.evaluate(self.model, self.probe_inputs, self.global_step, self._outputs,
                                         where="PhysicsHealth")
        outputs = [values[name] for name in self._outputs]
        intensity = outputs[0]
        if intensity.shape != self.probe_counts.shape:
            raise ValueError(f"PhysicsHealth: {self.intensity_output!r} on probe_inputs has shape "
                             f"{intensity.shape} but probe_counts has shape {self.probe_counts.shape}; give "
                             "the measured intensities of the probe batch")
        saturation = physics.saturation_fraction(outputs[1] if len(outputs) > 1 else [], *self._range)
        if self._range == (None, None):
            saturation["reason"] = self._range_reason
        return {
            "step": int(self.global_step),
            "photon_budget": physics.photon_budget(intensity, self.probe_counts),
            "nonpositive_fraction": physics.nonpositive_fraction(intensity),
            "saturation_fraction": saturation,
        }

    def publish(self, evaluation, epoch):
        evaluation = {"epoch": int(epoch), **evaluation}
        self.record.physics.append(evaluation)
        budget = evaluation["photon_budget"]
        scalars = {f"physics/photon_budget/{key}": budget[key] for key in ("mean", "p05", "p95")}
        scalars["physics/nonpositive_fraction"] = evaluation["nonpositive_fraction"]["fraction"]
        scalars["physics/saturation_fraction"] = evaluation["saturation_fraction"]["fraction"]
        with self.run.summaries("train") as writer:
            for tag, value in scalars.items():
                value = stats.finite_or_none(value)
                if writer is not None and value is not None:
                    tf.summary.scalar(tag, summary_value(value), step=epoch)
            if writer is not None:
                writer.flush()
