"""NaNGuard: stops a training at the batch where the loss, log_scale or a weight stops being finite."""

import contextlib
import math

import numpy as np
import tensorflow as tf

from .base import RecordingCallback
from .batch_values import BatchValues, tf_variable
from .scale_discovery import find_log_scale

ON_NAN_CHOICES = ("stop", "raise")

LOG_SCALE = "log_scale"
"""Component name of the intensity scaler's `log_scale` in an event."""

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


def _is_loss_name(name):
    return name == "loss" or name.endswith("_loss")


def _as_float(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _is_finite(value):
    return value is not None and math.isfinite(value)


def _variable_name(variable):
    name = getattr(variable, "path", None) or getattr(variable, "name", "") or "?"
    return name[:-2] if name.endswith(":0") else name


def _describe(value):
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.3g}"


def _first_nonfinite(variable):
    """A non-finite element of `variable` (NaN first), or None; computed on the device."""
    values = tf.convert_to_tensor(variable)
    if not values.dtype.is_floating:
        return None
    if bool(tf.reduce_any(tf.math.is_nan(values))):
        return float("nan")
    if bool(tf.reduce_any(tf.math.is_inf(values))):
        positive = tf.reduce_any(tf.logical_and(values > 0, tf.math.is_inf(values)))
        return float("inf") if bool(positive) else float("-inf")
    return None


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
    number of optimizer steps done in this `fit`, the failing one included
    (1-based), the same step our other callbacks use on TensorBoard's x axis.
    With `steps_per_execution > 1` Keras calls the hook once per execution and
    the guard checks there.

    Cost: ONE compiled `tf.function` call per training batch, returning one
    small vector: Keras's loss-tracker totals and counts (the per-batch
    values are their change, as `BatchValues` computes them), one "all
    weights finite" boolean reduced on the device, and log_scale. With
    `restore_weights` the same call copies the weights into device-side
    shadow variables (`assign`, no host copy) when everything was finite.
    Weight names and values are fetched only when the check fails. A
    validation batch costs one read of the trackers. `restore_weights` keeps
    one extra copy of the weights in device memory; it does not restore the
    optimizer's state (e.g. Adam's moments), which a NaN gradient may have
    spoiled: the printed line says so, re-compile before training on.

    Args:
        on_nan: `"stop"` (set `model.stop_training`, graceful) or `"raise"`
            (raise `NonFiniteTrainingError`, with the event as its `event`
            attribute; other callbacks' `on_train_end` do not run).
        restore_weights: on a training event, put back the weights after the
            last batch where everything was finite (the weights at train
            begin if the very first batch fails).
        check_weights: also check every weight after every batch (catches a
            NaN/Inf update before the loss shows it).
        check_validation: also check validation batches.
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
                 log_dir=None, record=None, verbose=1):
        if on_nan not in ON_NAN_CHOICES:
            raise ValueError(f"on_nan must be one of {ON_NAN_CHOICES}, got {on_nan!r}")
        super().__init__(log_dir=log_dir, record=record)
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
        self._trackers = None  # BatchValues over Keras's loss trackers
        self._last_finite = {"train": {}, "val": {}}
        self._variables = None  # [(name, tf.Variable)] watched: weights and log_scale
        self._log_scale = None
        self._shadows = None
        self._snapshot_batch = None  # (epoch, batch, step) of the snapshot; None: train begin
        self._train_check = None

    def _prepare_variables(self):
        """Finds the watched variables (weights and log_scale); makes the shadows when asked to."""
        variables, seen = [], set()
        log_scale, _, _ = find_log_scale(self.model)
        self._log_scale = None if log_scale is None else tf_variable(log_scale)
        candidates = list(self.model.weights) + ([log_scale] if log_scale is not None else [])
        for variable in candidates:
            tf_var = tf_variable(variable)
            if id(tf_var) in seen or not tf.as_dtype(tf_var.dtype).is_floating:
                continue
            seen.add(id(tf_var))
            variables.append((_variable_name(variable), tf_var))
        self._variables = variables
        if self.restore_weights:
            self._shadows = self._make_shadows()

    def _make_shadows(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            return [tf.Variable(v.read_value(), trainable=False, name=f"nan_guard_shadow_{i}")
                    for i, (_, v) in enumerate(self._variables)]

    def _prepare_trackers(self):
        """Keras's loss trackers, read the way `LossComponents` reads them."""
        self._trackers = BatchValues(self.model, include=_is_loss_name)

    def _build_train_check(self):
        """ONE compiled call per batch: tracker state, all-weights-finite, snapshot, log_scale."""
        tf_vars = [v for _, v in self._variables]
        shadows = self._shadows
        check_all = self.check_weights or bool(shadows)
        log_scale = self._log_scale

        def check(logged_ok):
            state = self._trackers.state()
            losses_ok = tf.logical_and(logged_ok, tf.reduce_all(tf.math.is_finite(state)))
            if check_all and tf_vars:
                weights_ok = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in tf_vars]))
            else:
                weights_ok = tf.constant(True)
            saved = tf.constant(False)
            if shadows:
                def save():
                    with tf.control_dependencies([s.assign(v) for s, v in zip(shadows, tf_vars)]):
                        return tf.constant(True)

                saved = tf.cond(tf.logical_and(weights_ok, losses_ok), save, lambda: tf.constant(False))
            scale = tf.cast(log_scale, tf.float32) if log_scale is not None else tf.constant(0.0)
            head = tf.stack([tf.cast(weights_ok, tf.float32), tf.cast(saved, tf.float32), scale])
            return tf.concat([head, state], 0)

        return tf.function(check, autograph=False)

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset_state()
        self._in_fit = True
        if self.model.weights:
            self._prepare_variables()  # the shadows hold the initial weights until a finite batch

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._trackers is not None:
            self._trackers.reset()  # Keras resets its trackers at each epoch start

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
        packed = self._train_check(tf.constant(logged_ok)).numpy()
        weights_ok = bool(packed[0]) or not self.check_weights
        if packed[1]:
            self._snapshot_batch = (self.epoch, batch, self.global_step)
        values = self._trackers.values_from(packed[3:])
        values.update(logged)
        if self._log_scale is not None:
            values[LOG_SCALE] = float(packed[2])
        if weights_ok and all(_is_finite(v) for v in values.values()):
            self._last_finite["train"].update(values)
            return
        self._on_event("train", batch, values, weights_failed=not weights_ok)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._stop_at_epoch_end:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        if self._trackers is not None:
            self._trackers.reset()  # Keras resets its trackers at evaluation start

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, logs)
        if self.event is not None or not self.check_validation:
            return
        if self._trackers is None:
            self._prepare_trackers()
        values = self._trackers.read(prefix="val_")
        values.update(self._logged_losses(logs, prefix="val_"))
        if all(_is_finite(v) for v in values.values()):
            self._last_finite["val"].update(values)
            return
        self._on_event("val", batch, values, weights_failed=False)

    def on_test_end(self, logs=None):
        super().on_test_end(logs)
        if not self._in_fit:
            self.release_writers()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._in_fit = False
        self.release_writers()

    # ------------------------------------------------------------------ details

    def _logged_losses(self, logs, prefix):
        """Loss entries Keras logs without a tracker we can read (custom train steps).

        Their running mean turns non-finite at the same batch as the value itself.
        """
        tracked = set(self._trackers.names) if self._trackers is not None else set()
        values = {}
        for name, value in (logs or {}).items():
            if _is_loss_name(name) and name not in tracked:
                value = _as_float(value)
                if value is not None:
                    values[prefix + name] = value
        return values

    def _nonfinite_weights(self):
        """[(name, a non-finite value)] of the watched variables that hold NaN/Inf (event time only)."""
        found = []
        for name, variable in self._variables or []:
            value = _first_nonfinite(variable)
            if value is not None:
                found.append((name, value, variable is self._log_scale))
        return found

    def _order(self, names):
        def rank(name):
            bare = name[4:] if name.startswith("val_") else name
            if name in (LOG_SCALE, WEIGHTS):
                return 2 if name == LOG_SCALE else 3
            return 1 if bare == "loss" else 0
        return sorted(names, key=rank)  # stable: components keep Keras's order

    def _on_event(self, phase, batch, values, weights_failed):
        components = [name for name, value in values.items() if not _is_finite(value)]
        # Per name: the names still finite at this batch keep this batch's value.
        self._last_finite[phase].update({name: value for name, value in values.items() if _is_finite(value)})
        extra_values = {}
        nonfinite_weights = []
        if phase == "train" and (weights_failed or LOG_SCALE in components):
            bad = self._nonfinite_weights()
            nonfinite_weights = [name for name, _, _ in bad]
            others = [(name, value) for name, value, is_scale in bad if not is_scale]
            if others and self.check_weights:
                components.append(WEIGHTS)
                extra_values[WEIGHTS] = others[0][1]
        components = self._order(components)
        event_values = {name: extra_values[name] if name in extra_values else values[name] for name in components}
        last_finite = {name: self._last_finite[phase].get(name)
                       for name in self._order(list(values) + [n for n in self._last_finite[phase]
                                                               if n not in values])
                       if name != WEIGHTS}
        event = {
            "epoch": int(self.epoch),
            "batch": int(batch),
            "step": int(self.global_step),
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

    def _restore(self, event):
        if not self._shadows:
            return " No weights were restored: no snapshot exists (the model had no weights at train begin)."
        for shadow, (_, variable) in zip(self._shadows, self._variables):
            variable.assign(shadow)
        event["weights_restored"] = True
        if self._snapshot_batch is None:
            where = "the weights of train begin (no batch had finished with everything finite)"
        else:
            epoch, batch, step = self._snapshot_batch
            where = f"the weights after epoch {epoch}, batch {batch} (step {step}), the last finite batch"
        note = f" Restored {where}."
        optimizer = getattr(self.model, "optimizer", None)
        opt_vars = getattr(optimizer, "variables", None)
        opt_vars = opt_vars() if callable(opt_vars) else (opt_vars or [])
        if any(_first_nonfinite(tf_variable(v)) is not None for v in opt_vars):
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
            "verbose": self.verbose,
        })
        return config
