"""IntensityScaleMonitor: watches PtychoPINN's shared `log_scale` variable."""

import math

import numpy as np

from .. import stats
from .base import RecordingCallback
from .probe_inputs import check_probe_inputs, probe_batch
from .scalar_rows import write_scalars
from .scale_discovery import is_trained_by_optimizer, shares_one_variable
from .variables import variable_value

HOW_TO_NAME = ("pass log_scale_variable=<the variable> to IntensityScaleMonitor or default_callbacks; "
               "found without it are the one variable held (as a weight, or an attribute such as `w`) "
               "by a layer of class or name IntensityScaler / IntensityScaler_inv / intensity_scaler / "
               "intensity_scaler_inv, or else a model variable whose name contains 'log_scale'")
"""How to make the scale variable known; kept as the record's `log_scale.note` when none is found."""

_STATE_SECTION = "report.md §IntensityScaler State"


class IntensityScaleMonitor(RecordingCallback):
    """Logs log_scale and exp(log_scale) and says when the scale is not what it should be.

    Finds the variable without being told: the variable held by layers of
    class or name `IntensityScaler` / `IntensityScaler_inv` (as a weight or an
    attribute such as PtychoPINN's `w`), or a model variable named like
    `log_scale`. It tells, in plain words and in the run record:
    - when the variable is declared trainable but the optimizer cannot update
      it (PtychoPINN's plain `tf.Variable` under Keras 3 is not tracked);
    - when exp(log_scale) drifts from the configured intensity_scale by more
      than `drift_tolerance`;
    - when, given `probe_inputs`, the scaled input is off from the normalized
      data by about a factor exp(log_scale)**2 in intensity: the scale was
      applied twice (or not at all) before the model;
    - whether both scaler layers share one variable, and whether it moved.

    TensorBoard tags (run `ptycho/train`): `scale/batch/log_scale`,
    `scale/batch/exp_log_scale` at the global step (noted by the batch hook,
    from the `NaNGuard`'s verdict when there is one, and written in blocks
    of batches with the run's other per-batch points); `scale/epoch/log_scale`,
    `scale/epoch/exp_log_scale`, `scale/epoch/configured_scale`,
    `scale/epoch/ratio_to_configured` at the epoch.

    Args:
        log_scale_variable: the variable to watch; found automatically if None.
        configured_scale: the intensity_scale of the run's configuration
            (`params.cfg['intensity_scale']`); the record's config value, else
            exp of the variable's value at train begin, if None.
        configured_trainable: `intensity_scale.trainable` of the configuration.
        drift_tolerance: relative drift of exp(log_scale) from the configured
            scale that triggers a warning.
        update_freq: log batch values every this many batches; "epoch" for
            epoch values only.
        probe_inputs: optional small batch of model inputs for the
            double-application check.
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        log_dir: run directory when `run` is None; None writes no logs.
        verbose: 1 prints findings as one line each (what, when, where to
            look); 0 keeps them in the record.

    Raises:
        ValueError: at construction for a `log_scale_variable` that is not
            a scalar variable, a non-positive or non-finite
            `configured_scale` or `drift_tolerance`, or non-numeric or empty
            `probe_inputs`; at train begin for a configured intensity_scale
            (argument or record config) that is not a positive number, or
            `probe_inputs` that do not fit the model's inputs.
        OSError: at construction, when `log_dir` cannot be written.

    Example:
    >>> model.fit(x, y, epochs=5,
    ...           callbacks=[IntensityScaleMonitor(configured_scale=988.212, log_dir="runs/a")])
    """

    def __init__(self, log_scale_variable=None, configured_scale=None, configured_trainable=None,
                 drift_tolerance=0.05, update_freq=1, probe_inputs=None, run=None, log_dir=None, verbose=1):
        if configured_scale is not None and not _positive(configured_scale):
            raise ValueError(f"configured_scale must be a positive finite number, got {configured_scale!r}")
        if not _positive(drift_tolerance):
            raise ValueError(f"drift_tolerance must be a positive finite number, got {drift_tolerance!r}")
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq must be 'epoch' or a positive integer, got {update_freq!r}")
        if log_scale_variable is not None:
            _check_variable(log_scale_variable)
        probe = probe_batch(probe_inputs) if probe_inputs is not None else None
        super().__init__(run=run, log_dir=log_dir)
        self.log_scale_variable = log_scale_variable
        self.configured_scale = configured_scale
        self.configured_trainable = configured_trainable
        self.drift_tolerance = float(drift_tolerance)
        self.update_freq = update_freq
        self.probe_inputs = probe
        self.verbose = verbose
        self._variable = None
        self._configured = None
        self._drift_warned = False

    def set_model(self, model):
        super().set_model(model)
        if self.log_scale_variable is not None:
            self.run.use_log_scale(self.log_scale_variable)
        scaler = self._scaler_layer()
        if self.probe_inputs is not None and scaler is not None:
            self.run.probe.declare([scaler.name])
        self.run.add_charts("intensity scale", [
            ("log_scale per batch", r"scale/batch/log_scale"),
            ("exp(log_scale) per batch", r"scale/batch/exp_log_scale"),
            ("exp(log_scale) and configured scale per epoch", r"scale/epoch/(exp_log_scale|configured_scale)"),
        ])

    def _value(self):
        return float(variable_value(self._variable))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._drift_warned = False
        if self.probe_inputs is not None:
            check_probe_inputs(self.model, self.probe_inputs)
        variable, how, scalers = self.run.log_scale
        self._variable = variable
        if variable is not None and self.log_dir is not None and self.update_freq != "epoch":
            self.run.add_batch_writer(self, self._batch_columns)
        if variable is None:
            self.record.log_scale = {"found": False, "how_found": how, "note": HOW_TO_NAME}
            self.announce("warning", "log_scale_not_found",
                          f"no log_scale variable found at train begin ({how}): the scale is not watched; "
                          f"{HOW_TO_NAME}.", _STATE_SECTION)
            return
        initial = self._value()
        config = self.record.config
        configured = self.configured_scale or config.get("intensity_scale")
        if configured is None:
            configured = math.exp(initial)
        elif not _positive(configured):
            raise ValueError(f"the configured intensity_scale must be a positive finite number, got {configured!r} "
                             "(from configured_scale= or config['intensity_scale'])")
        self._configured = float(configured)
        config.setdefault("intensity_scale", self._configured)
        if self.configured_trainable is not None:
            config.setdefault("intensity_scale_trainable", self.configured_trainable)
        declared = bool(getattr(variable, "trainable", False))
        trained = is_trained_by_optimizer(self.model, variable)
        self.record.log_scale = {
            "found": True, "how_found": how,
            "variable_name": getattr(variable, "path", None) or getattr(variable, "name", None),
            "initial": initial, "final": initial, "history": [],
            "declared_trainable": declared, "in_trainable_variables": trained, "moved": False,
            "shared": shares_one_variable(scalers, variable), "note": None,
        }
        if declared and not trained:
            self.announce("warning", "log_scale_not_trained",
                          "log_scale says trainable=True but is not among the model's trainable variables at "
                          "train begin, so the optimizer will never update it (a plain tf.Variable set as a "
                          "layer attribute is not tracked by Keras 3); create it with add_weight, or train "
                          "with tf_keras.", f"TensorBoard scale/epoch/log_scale (flat) and {_STATE_SECTION}")
        if self.record.log_scale["shared"] is False:
            self.announce("warning", "log_scale_not_shared",
                          "IntensityScaler and IntensityScaler_inv hold different variables at train begin: "
                          "input and output are scaled by different factors.", _STATE_SECTION)
        if self.probe_inputs is not None:
            self._check_double_application(self._configured)

    def _scaler_layer(self):
        """The layer that divides the input by the scale (class `IntensityScaler` or name `intensity_scaler`)."""
        return next((layer for layer in getattr(self.model, "layers", []) if type(layer).__name__ == "IntensityScaler"
                     or layer.name == "intensity_scaler"), None)

    def _check_double_application(self, configured):
        scaler = self._scaler_layer()
        if scaler is None:
            return
        scaled = self.run.probe.evaluate(self.model, self.probe_inputs, self.global_step, [scaler.name],
                                         where="IntensityScaleMonitor")[scaler.name]
        check = stats.scale_application(scaled, configured)
        if check is None:
            return
        observed, expected = check["observed"], check["expected"]
        self.record.log_scale["scaled_input_intensity"] = observed
        look_at = "the model's input data path (PtychoPINN feeds intensity_scale * X)"
        if check["verdict"] == "divided_twice":
            self.announce("warning", "log_scale_double_applied",
                          f"at train begin, the probe batch's scaled input has mean pattern intensity {observed:.4g}, "
                          f"about (N/2)^2 / scale^2 (expected {expected:.4g}): the input looks divided by the "
                          "scale twice. Feed the model intensity_scale * X, not X.", look_at)
        elif check["verdict"] == "multiplied_twice":
            self.announce("warning", "log_scale_not_applied",
                          f"at train begin, the probe batch's scaled input has mean pattern intensity {observed:.4g}, "
                          f"about (N/2)^2 * scale^2 (expected {expected:.4g}): the input looks multiplied by the scale "
                          "twice. Feed the model intensity_scale * X once.",
                          look_at)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if (self._variable is None or self.log_dir is None or self.update_freq == "epoch"
                or self.global_step % self.update_freq):
            return
        if not self.run.batches.has_log_scale(self.global_step):  # no NaN guard before this callback noted it
            self.run.note_batch(self.global_step, log_scale=self._value())

    def _batch_columns(self, block):
        """TensorBoard columns of a `Block` of batches: log_scale and exp(log_scale), every `update_freq` steps."""
        scale = np.ma.masked_where(block.steps % self.update_freq != 0, block.log_scale)
        with np.errstate(over="ignore"):
            return {"scale/batch/log_scale": scale, "scale/batch/exp_log_scale": np.ma.exp(scale)}

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._variable is None:
            return
        value = self._value()
        state = self.record.log_scale
        state["history"].append(value)
        state["final"] = value
        state["moved"] = value != state["initial"]
        configured = self._configured
        ratio = _safe_exp(value) / configured
        if math.isfinite(ratio) and abs(ratio - 1) > self.drift_tolerance and not self._drift_warned:
            self._drift_warned = True
            self.announce("warning", "log_scale_drift",
                          f"exp(log_scale) = {_safe_exp(value):.4g} drifted {100 * (ratio - 1):+.1f}% from the "
                          f"configured intensity_scale {configured:.4g} at the end of epoch {epoch} (index from 0; "
                          f"{self.global_step} train steps done; "
                          f"tolerance {100 * self.drift_tolerance:.0f}%): predictions are rescaled by that factor.",
                          "TensorBoard scale/epoch/ratio_to_configured")
        with self.run.summaries("train") as writer:
            if writer is not None:  # at the epochs completed, as for all epoch series
                write_scalars(writer, epoch + 1, {"scale/epoch/log_scale": value,
                                                  "scale/epoch/exp_log_scale": _safe_exp(value),
                                                  "scale/epoch/configured_scale": configured,
                                                  "scale/epoch/ratio_to_configured": ratio})

    def on_train_end(self, logs=None):
        state = self.record.log_scale
        if self._variable is not None:
            state["final"] = self._value()
            state["moved"] = state["final"] != state["initial"]
            restore = next((event for event in self.record.nan_events if event.get("weights_restored")), None)
            trained = state["declared_trainable"] and state["in_trainable_variables"]
            if restore is not None and not state["moved"]:
                # Only what was measured: an untracked log_scale never moved and has its own finding.
                if trained:
                    after = restore.get("restored_after_step")
                    what = f"the weights after step {after}" if after is not None else "the weights of train begin"
                    self.announce("info", "log_scale_at_initial_after_restore",
                                  f"log_scale is at its initial value at train end (step {self.global_step}); the "
                                  f"NaN guard had put back {what}.", _STATE_SECTION)
            elif trained and not state["moved"]:
                self.announce("warning", "log_scale_not_moved",
                              f"log_scale is trainable and tracked but had not moved at train end (step "
                              f"{self.global_step}, {len(state['history'])} epoch(s)): zero gradient, or a "
                              "learning rate of 0 for it.", f"TensorBoard scale/batch/log_scale and {_STATE_SECTION}")
        super().on_train_end(logs)


def _positive(value):
    """True for a positive finite real number (not a bool)."""
    number = None if isinstance(value, bool) else stats.finite_or_none(value)
    return number is not None and number > 0


def _check_variable(variable):
    """ValueError unless `variable` is a scalar variable (tf.Variable or Keras Variable)."""
    if not (hasattr(variable, "assign") and hasattr(variable, "trainable")):
        raise ValueError("log_scale_variable must be the variable holding log(intensity_scale) (a tf.Variable "
                         f"or Keras Variable, e.g. model.get_layer('intensity_scaler').w), got "
                         f"{type(variable).__name__}")
    size = variable_value(variable).size
    if size != 1:
        raise ValueError(f"log_scale_variable must hold one number, log(intensity_scale); it holds {size}")


def _safe_exp(value):
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf
