"""NaNGuard: stops a training at the batch where the loss, log_scale or a weight stops being finite."""

import math

import numpy as np
import tensorflow as tf

from .base import RecordingCallback
from ..forensics.capture import model_variables, variable_name
from .batch_values import BatchValues, tf_variable
from .scale_discovery import find_log_scale
from .step_guard import NAN, NEG_INF, POS_INF, StepGuard, is_loss_name

ON_NAN_CHOICES = ("stop", "raise")

DEFAULT_FORENSICS_BYTES = 256 * 2**20

LOG_SCALE = "log_scale"
"""Component name of the intensity scaler's `log_scale` in an event."""

_HEAD = 4
"""Entries of the batch check's vector before the tracker state."""

WEIGHTS = "weights"
"""Component name of the model's weights (other than `log_scale`) in an event."""

_HINTS = {
    "pred_intensity_loss": "Look for a predicted intensity of 0 (the Poisson NLL then takes log(0): dead "
                           "amplitude head, learning rate too high) or NaN/Inf in the intensity targets",
    "intensity_scaler_inv_loss": "Look for NaN/Inf in the amplitude targets, the predicted amplitude "
                                 "and exp(log_scale)",
    "trimmed_obj_loss": "Look for NaN/Inf in the object targets and the predicted object (trimmed_obj)",
    "loss": "Look at the loss weights and any regularization loss",
    LOG_SCALE: "Look at what updates or assigns the intensity scaler's log_scale",
    WEIGHTS: "Look at the update of the listed weights (nonfinite_weights of the event): usually a "
             "learning rate too high",
}


class NonFiniteTrainingError(RuntimeError):
    """Raised by `NaNGuard(on_nan="raise")` when a loss, log_scale or weight is NaN or Inf.

    Attributes:
        event: the event dict, as appended to `record.nan_events`.
    """

    def __init__(self, message, event=None):
        super().__init__(message)
        self.event = event


def _as_float(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _is_finite(value):
    return value is not None and math.isfinite(value)


def _describe(value):
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.3g}"


class NaNGuard(RecordingCallback):
    """Stops training at the batch where the loss, `log_scale` or a weight stops being finite.

    After every training batch it checks the total loss, every loss component
    (the value of THIS batch, not Keras's running mean), the intensity
    scaler's `log_scale` (found by `find_log_scale`) and, with
    `check_weights`, every weight of the model. At the first NaN or Inf it
    records an event in `record.nan_events` (epoch, batch, step, the names
    that went non-finite, their values, the last finite value of every
    watched name, the non-finite weights), sets `record.status` to
    `"stopped_nan"`, writes the event to TensorBoard (a text `nan/event` and a
    scalar `nan/first_step` whose one point marks the step), prints one line
    saying what went non-finite where, optionally puts back the last weights
    for which everything was finite, and stops training: gracefully (Keras
    ends the fit after this batch, `on_train_end` runs) or by raising
    `NonFiniteTrainingError`. Only the first event of a `fit` is recorded.

    With `check_validation`, a NaN/Inf validation loss (components prefixed
    `val_`) is an event of phase `"val"`; training stops at the end of that
    epoch (or at once with `on_nan="raise"`). Validation events never
    restore weights: the training batches before them were finite.

    Conventions of an event: `epoch` and `batch` are 0-based, as Keras passes
    them to callbacks (the progress bar shows them 1-based); `step` is the
    optimizer's step count after the failing step (`optimizer.iterations`,
    1-based), the step our other callbacks use on TensorBoard's x axis.

    Where: the guard wraps the model's `train_step` for the duration of the
    fit (`StepGuard`), so the check runs inside every step: with
    `steps_per_execution > 1` (one hook per several steps) and under
    `jit_compile=True` (XLA, where `tf.debugging.check_numerics` lets NaN
    through; `tf.math.is_finite` does not) the event still names the exact
    step, and with `restore_weights` the last finite weights are back before
    any other callback (`ModelCheckpoint`, `BackupAndRestore`,
    `EarlyStopping`) sees the step, wherever the guard stands in the list.
    Under a strategy with several replicas the step is not wrapped and the
    guard checks in the batch hook. The guarded step is traced once per
    model and compile: a later fit, even with a new guard of the same
    settings, uses it again, and Keras's own step is back after each fit.

    Cost: inside the step, a few `is_finite` reductions and, with
    `restore_weights` or `forensics`, one device-side copy of the weights
    (no host copy); in the batch hook, ONE compiled call returning the first
    bad step and Keras's loss-tracker totals and counts (the per-batch values
    are their change, as `BatchValues` computes them). Names and values are
    fetched only when the guard fires. A validation batch costs one read of
    the trackers. `restore_weights` does not restore the optimizer's state
    (e.g. Adam's moments), which a NaN gradient may have spoiled: the printed
    line says so, re-compile before training on.

    With `forensics` (and a `log_dir`), the failing step's batch is kept on
    the device (not under XLA) and, when the guard fires, written with the
    weights before the step to `<log_dir>/nan_forensics/`; the step is then
    replayed with per-op numeric checking to name the layer and op that went
    first (`record.forensics`, the report's "NaN forensics" section).

    Args:
        on_nan: `"stop"` (set `model.stop_training`, graceful) or `"raise"`
            (raise `NonFiniteTrainingError`, with the event as its `event`
            attribute; other callbacks' `on_train_end` do not run).
        restore_weights: on a training event, put back the weights after the
            last step where everything was finite (the weights at train
            begin if the very first step fails); for a weight another
            callback made non-finite between steps, the weights the last
            step started from.
        check_weights: also check every weight after every batch (catches a
            NaN/Inf update before the loss shows it).
        check_validation: also check validation batches.
        forensics: on a training event, save and replay the failing step
            (needs `log_dir`).
        forensics_max_bytes: size limit of the `nan_forensics/` folder.
        log_dir: run directory for TensorBoard (`<log_dir>/ptycho/train`);
            None writes no TensorBoard data.
        record: the `RunRecord` to fill; a new one if None.
        verbose: 1 prints one line per event, 0 prints nothing.

    Example:

    ```python
    guard = NaNGuard(restore_weights=True, log_dir="runs/gs2")
    model.fit(x, y, epochs=50, callbacks=[guard])
    if guard.record.nan_events:
        print(guard.record.nan_events[0]["components"])
    ```
    """

    def __init__(self, on_nan="stop", restore_weights=False, check_weights=True, check_validation=True,
                 forensics=False, forensics_max_bytes=DEFAULT_FORENSICS_BYTES, log_dir=None, record=None,
                 verbose=1):
        if on_nan not in ON_NAN_CHOICES:
            raise ValueError(f"on_nan must be one of {ON_NAN_CHOICES}, got {on_nan!r}")
        if forensics and log_dir is None:
            raise ValueError("NaNGuard(forensics=True) needs a log_dir to write nan_forensics/ into")
        if forensics_max_bytes <= 0:
            raise ValueError(f"forensics_max_bytes must be positive, got {forensics_max_bytes!r}")
        super().__init__(log_dir=log_dir, record=record)
        self.forensics = bool(forensics)
        self.forensics_max_bytes = int(forensics_max_bytes)
        self.on_nan = on_nan
        self.restore_weights = bool(restore_weights)
        self.check_weights = bool(check_weights)
        self.check_validation = bool(check_validation)
        self.verbose = int(verbose)
        self.event = None
        self._reset_state()

    # ------------------------------------------------------------------ state

    def _reset_state(self):
        self.event = None
        self._in_fit = False
        self._stop_at_epoch_end = False
        self._trackers = None  # the shared BatchValues over Keras's trackers
        self._loss_state = None  # positions of the loss trackers in its state
        self._last_finite = {"train": {}, "val": {}}
        self._variables = None  # [(name, tf.Variable)] watched: weights and log_scale
        self._log_scale = None
        self._step_guard = None
        self._train_check = None

    @property
    def _shadows(self):
        return None if self._step_guard is None else self._step_guard.shadows

    def step_guard_options(self):
        """The options of the `StepGuard` this guard arms inside each train step.

        The weights' device-side snapshot is kept for `restore_weights` (put
        back in the failing step) and for `forensics` (saved with the batch).
        """
        return dict(check_weights=self.check_weights, keep_snapshot=self.restore_weights or self.forensics,
                    restore_in_step=self.restore_weights, capture_batch=self.forensics)

    def _prepare_variables(self):
        """Finds the watched variables (weights and log_scale) and arms the device-side guard.

        The names are those `nan_forensics/` and its replay use (`model_variables`).
        """
        log_scale, _, _ = find_log_scale(self.model)
        self._log_scale = None if log_scale is None else tf_variable(log_scale)
        variables = [(name, variable) for name, variable in model_variables(self.model)
                     if tf.as_dtype(variable.dtype).is_floating]
        self._variables = variables
        self._step_guard = StepGuard.for_model(self.model, [v for _, v in variables], **self.step_guard_options())
        self._step_guard.reset(self.global_step)
        self._in_step = self._step_guard.install()

    def _prepare_trackers(self):
        """Keras's trackers, through the reader `LossComponents` shares; the guard checks the losses among them."""
        self._trackers = BatchValues.shared(self.model)
        self._loss_state = [2 * index + part for index, name in enumerate(self._trackers.names)
                            if is_loss_name(name) for part in (0, 1)]

    def _build_train_check(self):
        """ONE compiled call per batch: the hook's own check, the first bad step, tracker state, log_scale.

        Inside the step (when the guard could wrap it) the check already ran
        per step; here it catches what changed between steps (e.g. a
        callback assigning a weight) and, under a multi-replica strategy, is
        the only check. It returns one float64 vector, read in one transfer:
        [first bad step, must fire, losses finite, log_scale, tracker
        state...] (float64 holds any step count exactly). Beside the step's
        check it takes no inputs (the logged losses are weighed on the host,
        see `_train_verdict`): binding inputs was a tenth of a millisecond.
        """
        guard = self._step_guard
        log_scale = self._log_scale
        in_step = self._in_step

        def check(logged_ok, step):
            state = self._trackers.state()
            loss_state = tf.gather(state, tf.constant(self._loss_state, tf.int32))
            losses_ok = tf.logical_and(logged_ok, tf.reduce_all(tf.math.is_finite(loss_state)))
            if in_step:  # the firing itself, rare, is a call of its own (fire_now)
                fired = must_fire = tf.cast(guard.must_fire(losses_ok), tf.float64)
            else:  # no check in the step: this one is the guard, snapshot included
                fired = guard.check(losses_ok, step, snapshot=True)
                must_fire = tf.constant(0.0, tf.float64)
            with tf.control_dependencies([fired]):
                first_bad = tf.cast(guard.first_bad, tf.float64)
            scale = tf.cast(log_scale, tf.float64) if log_scale is not None else tf.constant(0.0, tf.float64)
            head = tf.stack([first_bad, must_fire, tf.cast(losses_ok, tf.float64), tf.reshape(scale, [])])
            return tf.concat([head, tf.cast(state, tf.float64)], 0)

        if in_step:
            function = tf.function(lambda: check(tf.constant(True), None), autograph=False)
            return function.get_concrete_function()
        self._verdicts = {True: tf.constant(True), False: tf.constant(False)}  # made once, not per call
        # A concrete function: each batch skips tf.function's dispatch, a quarter of a millisecond here.
        signature = [tf.TensorSpec([], tf.bool), tf.TensorSpec([], tf.int64)]
        return tf.function(check, input_signature=signature, autograph=False).get_concrete_function()

    def _train_verdict(self, logged_ok):
        """(packed check, must fire, losses finite) of this batch.

        Args:
            logged_ok: every loss entry of the logs Keras passed is finite.
        """
        if not self._in_step:
            packed = self._train_check(self._verdicts[logged_ok], tf.constant(self.global_step, tf.int64)).numpy()
        else:
            packed = self._train_check().numpy()
            if not logged_ok:  # the check in the graph took them as finite
                return packed, bool(packed[0] < 0), False
        return packed, bool(packed[1]), bool(packed[2])

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset_state()
        self._in_fit = True
        if self.model.weights:
            self._prepare_variables()  # the snapshot holds the initial weights until a finite step

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        BatchValues.reset_shared(self.model)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)  # global_step now counts this batch
        if self.event is not None:
            return
        if self._train_check is None:
            if self._variables is None:
                self._prepare_variables()  # a subclassed model is built by its first step
            if self._trackers is None:
                self._prepare_trackers()
            self._train_check = self._build_train_check()
        logged = self._logged_losses(logs, prefix="")
        logged_ok = all(_is_finite(v) for v in logged.values())
        packed, must_fire, losses_ok = self._train_verdict(logged_ok)
        first_bad = int(packed[0])
        if must_fire:
            first_bad = self._step_guard.fire_now(losses_ok, self.global_step)
        values = self._trackers.latest(self.global_step)  # a callback before this one read them already
        if values is None:
            values = self._trackers.values_from(packed[_HEAD:], step=self.global_step)
        values = self._batch_losses(values, logged)
        if self._log_scale is not None:
            values[LOG_SCALE] = float(packed[3])
        if first_bad < 0:
            # Finite losses, yet log_scale can be non-finite already (without check_weights it fires nothing).
            self._keep_last_finite("train", values)
            if self._log_scale is not None:  # the scale monitor's value of this step
                self._trackers.keep_variable(self._log_scale, values[LOG_SCALE], self.global_step)
            return
        self._on_event("train", first_bad - self._epoch_start_step - 1, values, step=first_bad)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._stop_at_epoch_end:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        BatchValues.reset_shared(self.model)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, logs)
        if self.event is not None or not self.check_validation:
            return
        if self._trackers is None:
            self._prepare_trackers()
        values = self._batch_losses(self._trackers.read(prefix="val_"), self._logged_losses(logs, prefix="val_"))
        if all(_is_finite(v) for v in values.values()):
            self._keep_last_finite("val", values)
            return
        self._on_event("val", batch, values)

    def on_test_end(self, logs=None):
        super().on_test_end(logs)
        if not self._in_fit:
            self.release_writers()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._end_fit()

    def _end_fit(self):
        self._in_fit = False
        if self._step_guard is not None:
            self._step_guard.uninstall()
        self.release_writers()

    def on_fit_exception(self, error):
        self._end_fit()

    # ------------------------------------------------------------------ details

    def _logged_losses(self, logs, prefix):
        """The loss entries of Keras's `logs`, as floats.

        For a loss that a tracker counted at this batch the tracker's value
        of the batch stands in for them (`_batch_losses`); the others are a
        custom train step's own values, or the running means of trackers
        such a step left alone: either turns non-finite at the batch where
        the loss does.
        """
        values = {}
        for name, value in (logs or {}).items():
            if is_loss_name(name):
                value = _as_float(value)
                if value is not None:
                    values[prefix + name] = value
        return values

    @staticmethod
    def _batch_losses(tracked, logged):
        """The losses of this batch: the trackers' values of it, and the logged losses no tracker counted."""
        values = {name: value for name, value in tracked.items() if is_loss_name(name)}
        for name, value in logged.items():
            values.setdefault(name, value)
        return values

    def _nonfinite_variables(self):
        """[(name, value, is log_scale)] of the watched variables non-finite when the guard fired."""
        kinds = self._step_guard.variable_kinds() if self._step_guard is not None else []
        value_of = {NAN: float("nan"), POS_INF: float("inf"), NEG_INF: float("-inf")}
        return [(name, value_of[kind], variable is self._log_scale)
                for (name, variable), kind in zip(self._variables or [], kinds) if kind in value_of]

    def _keep_last_finite(self, phase, values):
        """Keeps, per name, the latest finite value of `phase` ("train" or "val")."""
        self._last_finite[phase].update({name: value for name, value in values.items() if _is_finite(value)})

    def _order(self, names):
        def rank(name):
            bare = name[4:] if name.startswith("val_") else name
            if name in (LOG_SCALE, WEIGHTS):
                return 2 if name == LOG_SCALE else 3
            return 1 if bare == "loss" else 0
        return sorted(names, key=rank)  # stable: components keep Keras's order

    def _on_event(self, phase, batch, values, step=None):
        extra_values = {}
        nonfinite_weights = []
        if phase == "train":
            bad = self._nonfinite_variables()
            nonfinite_weights = [name for name, _, _ in bad]
            for name, value, is_scale in bad:
                if is_scale:
                    values[LOG_SCALE] = value
            others = [(name, value) for name, value, is_scale in bad if not is_scale]
            if others and self.check_weights:
                extra_values[WEIGHTS] = others[0][1]
        self._keep_last_finite(phase, values)  # the names still finite at this batch keep its value
        components = [name for name, value in values.items() if not _is_finite(value)] + list(extra_values)
        components = self._order(components)
        event_values = {name: extra_values[name] if name in extra_values else values[name] for name in components}
        last_finite = {name: self._last_finite[phase].get(name)
                       for name in self._order(list(values) + [n for n in self._last_finite[phase]
                                                               if n not in values])
                       if name != WEIGHTS}
        event = {
            "epoch": int(self.epoch),
            "batch": int(batch),
            "step": int(self.global_step if step is None else step),
            "phase": phase,
            "components": components,
            "values": event_values,
            "last_finite": last_finite,
            "weights_restored": False,
            "nonfinite_weights": nonfinite_weights,
        }
        restore_note = ""
        if phase == "train" and self.restore_weights:
            restore_note = self._restore(event)
        if phase == "train" and self.forensics and self.log_dir is not None:
            restore_note += self._collect_forensics(event)
        self.event = event
        self.record.nan_events.append(event)
        self.record.status = "stopped_nan"

        message = self._message(event, restore_note)
        self._write_tensorboard(event, message)
        if self.verbose:
            print(message, flush=True)
        if self.on_nan == "raise":
            self.release_writers()
            raise NonFiniteTrainingError(message, event)
        if not self._in_fit:
            return
        if phase == "train":
            self.model.stop_training = True
        else:
            self._stop_at_epoch_end = True

    def _collect_forensics(self, event):
        """Saves the failing step to `nan_forensics/` and replays it; returns a note for the message.

        Forensics must never be what breaks a training: a failure here is a
        finding of the record, not an exception.
        """
        from ..forensics.capture import write_forensics
        from ..forensics.replay import replay

        guard = self._step_guard
        before = list(zip([name for name, _ in self._variables], guard.snapshot()))
        batch = guard.captured_batch()
        try:
            folder = write_forensics(self.log_dir, self.model, batch, before, self._optimizer_state(), event,
                                     max_bytes=self.forensics_max_bytes)
            if batch is None:
                if not guard.installed:
                    reason = "the train step was not wrapped (a strategy with several replicas): no batch captured"
                elif not guard.captures_batch:
                    reason = "the batch was not captured: the step ran under XLA (jit_compile=True)"
                else:
                    reason = "the non-finite value appeared between steps (assigned outside the train step)"
                result = {"stage": "n/a", "reason": reason}
            else:
                result = replay(self.model, batch, weights=before)
            result["folder"] = folder
        except Exception as error:  # noqa: BLE001 - reported, never raised into the training
            self.record.add_finding("warning", "nan_forensics_failed",
                                    f"NaN forensics failed: {type(error).__name__}: {error}")
            return f" NaN forensics failed ({type(error).__name__}: {error})."
        self.record.forensics = result
        event["forensics"] = folder
        where = ", ".join(str(result[key]) for key in ("stage", "layer", "op") if result.get(key))
        return f" Forensics ({where or result.get('reason', 'n/a')}) in {folder}."

    def _optimizer_state(self):
        optimizer = getattr(self.model, "optimizer", None)
        variables = getattr(optimizer, "variables", None)
        variables = variables() if callable(variables) else (variables or [])
        return [(variable_name(v), np.asarray(tf_variable(v).numpy())) for v in variables]

    def _restore(self, event):
        if not self._shadows:
            return " No weights were restored: no snapshot exists (the model had no weights at train begin)."
        self._step_guard.restore()
        event["weights_restored"] = True
        snapshot_step = self._step_guard.snapshot_step_value()
        if snapshot_step <= self._fit_start_step:
            where = "the weights of train begin (no step had finished with everything finite)"
        else:
            where = f"the weights after step {snapshot_step}, the last finite step"
        note = f" Restored {where}."
        if any(not np.all(np.isfinite(value)) for _, value in self._optimizer_state()
               if np.issubdtype(value.dtype, np.floating)):
            note += " The optimizer's state is non-finite too: re-compile before training on."
        return note

    def _message(self, event, restore_note):
        first = event["components"][0] if event["components"] else "loss"
        value = event["values"].get(first)
        what = {float("inf"): "+Inf", float("-inf"): "-Inf"}.get(value, "NaN")
        where = "validation batch" if event["phase"] == "val" else "batch"
        if first == WEIGHTS:
            names = event["nonfinite_weights"]
            subject = f"weight {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
        else:
            subject = first
        last = _describe(event["last_finite"].get(first)) if first != WEIGHTS else None
        parts = [f"NaNGuard: {subject} became {what} at epoch {event['epoch']}, {where} {event['batch']} "
                 f"(0-based; step {event['step']})"]
        if last is not None:
            parts.append(f"; last finite value {last}")
        others = [c for c in event["components"] if c != first]
        if others:
            parts.append(f"; also non-finite: {', '.join(others)}")
        parts.append(".")
        if self.on_nan == "raise":
            parts.append(" Raising NonFiniteTrainingError.")
        elif not self._in_fit:
            parts.append(" (Not in model.fit: nothing to stop.)")
        elif event["phase"] == "val":
            parts.append(" Training stops at the end of this epoch.")
        else:
            parts.append(" Training stopped.")
        parts.append(restore_note)
        bare = first[4:] if first.startswith("val_") else first
        hint = _HINTS.get(bare, f"Look at what feeds {bare}")
        if event["phase"] == "val":
            hint += "; the training batches were finite, so look at the validation data first"
        parts.append(f" {hint}.")
        return "".join(parts)

    def _write_tensorboard(self, event, message):
        writer = self.writer("train")
        if writer is None:
            return
        markdown = message.replace("NaNGuard: ", f"**NaNGuard ({event['phase']})**: ", 1)
        with writer.as_default(), tf.summary.record_if(True):
            tf.summary.text("nan/event", markdown, step=event["step"])
            tf.summary.scalar("nan/first_step", float(event["step"]), step=event["step"])
        writer.flush()

    def get_config(self):
        config = super().get_config()
        config.update({
            "on_nan": self.on_nan,
            "restore_weights": self.restore_weights,
            "check_weights": self.check_weights,
            "check_validation": self.check_validation,
            "forensics": self.forensics,
            "forensics_max_bytes": self.forensics_max_bytes,
            "verbose": self.verbose,
        })
        return config
