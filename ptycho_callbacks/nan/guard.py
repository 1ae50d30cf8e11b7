"""NaNGuard: stops a training at the batch where the loss, log_scale or a weight stops being finite."""

import numpy as np
import tensorflow as tf

from ..callbacks.base import RecordingCallback
from ..callbacks.variables import model_variables, tf_variable, variable_name
from . import events
from ..callbacks.loss_discovery import is_loss_name
from .events import LOG_SCALE, NonFiniteTrainingError, is_finite
from .step_guard import HEAD, NAN, NEG_INF, POS_INF, StepGuard

ON_NAN_CHOICES = ("stop", "raise")

DEFAULT_FORENSICS_BYTES = 256 * 2**20


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
    them to callbacks (the progress bar shows them 1-based); `step` counts the
    train steps, the failing one included (1-based), on from the optimizer's
    step count at train begin (see `nan.events`): the step our other
    callbacks use on TensorBoard's x axis, exact also under mixed precision
    and gradient accumulation.

    Where: the guard wraps the model's `train_step` for the duration of the
    fit (`StepGuard`), so the check runs at the end of every step: with
    `steps_per_execution > 1` (one hook per several steps) and under
    `jit_compile=True` (XLA, where `tf.debugging.check_numerics` lets NaN
    through; `tf.math.is_finite` does not) the event still names the exact
    step, and with `restore_weights` the last finite weights are back before
    any other callback (`ModelCheckpoint`, `BackupAndRestore`,
    `EarlyStopping`) sees the step, wherever the guard stands in the list.
    A value another callback assigns between steps is found by the check at
    the end of the next step, which has run on it by then. Under a strategy
    with several replicas the step is not wrapped and the guard checks in
    the batch hook. The guarded step is traced once per model and compile: a
    later fit, even with a new guard of the same settings, uses it again,
    and Keras's own step is back after each fit.

    Cost: inside the step, one read of each watched variable and, with
    `restore_weights` or `forensics`, one flat device-side copy of them
    after each finite step (no host copy), checked with one `is_finite`
    reduction per dtype; two conditionals. The step hands its verdict
    (first bad step, `log_scale`, Keras's loss-tracker totals and counts)
    out with its logs, so the batch hook reads a vector already computed,
    makes no call to the device of its own and only notes the vector in
    the run (`Run.note_batch`), whose blocks of batches give each batch's
    values to every callback (`BatchLog`). When the guard fires, what each
    variable held is read and the weights are put back on the host, as the
    train function returns. A validation batch costs one read of the trackers.
    `restore_weights` does not restore the optimizer's state (e.g. Adam's
    moments), which a NaN gradient may have spoiled: the printed line says
    so, re-compile before training on.

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
            begin if the very first step fails).
        check_weights: also check every weight after every step (catches a
            NaN/Inf update before the loss shows it).
        check_validation: also check validation batches.
        forensics: on a training event, save and replay the failing step;
            None (the default) does so when the run has a directory.
        forensics_max_bytes: size limit of the `nan_forensics/` folder.
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        log_dir: run directory when `run` is None (TensorBoard under
            `<log_dir>/ptycho/train`); None writes no TensorBoard data.
        verbose: 1 prints one line per event, 0 prints nothing.

    Raises:
        ValueError: an unknown `on_nan`, `forensics=True` without a run
            directory, or a `forensics_max_bytes` that is not positive.

    Example:

    ```python
    guard = NaNGuard(log_dir="runs/gs2")
    model.fit(x, y, epochs=50, callbacks=[guard])
    if guard.record.nan_events:
        print(guard.record.nan_events[0]["components"])
    ```
    """

    def __init__(self, on_nan="stop", restore_weights=True, check_weights=True, check_validation=True,
                 forensics=None, forensics_max_bytes=DEFAULT_FORENSICS_BYTES, run=None, log_dir=None, verbose=1):
        if on_nan not in ON_NAN_CHOICES:
            raise ValueError(f"on_nan must be one of {ON_NAN_CHOICES}, got {on_nan!r}")
        if forensics_max_bytes <= 0:
            raise ValueError(f"forensics_max_bytes must be positive, got {forensics_max_bytes!r}")
        super().__init__(run=run, log_dir=log_dir)
        has_dir = (run.log_dir if run is not None else log_dir) is not None
        if forensics and not has_dir:
            raise ValueError("NaNGuard(forensics=True) needs a run directory (log_dir) to write nan_forensics/ into")
        self.forensics = has_dir if forensics is None else bool(forensics)
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
        self._loss_state = None  # positions of the loss trackers in the run's tracker state
        self._last_finite = {"train": {}, "val": {}}
        self._variables = None  # [(path, tf.Variable)] watched: the floating-point ones of _all_variables
        self._all_variables = None  # [(path, tf.Variable)] the model computes with (`model_variables`)
        self._log_scale = None
        self._step_guard = None
        self._train_check = None
        self._verdict_fits = None
        self._untracked = None  # names of the losses in the logs that no tracker counts

    def step_guard_options(self):
        """The options of the `StepGuard` this guard arms inside each train step.

        The weights' device-side snapshot is kept for `restore_weights` (put
        back in the failing step) and for `forensics` (saved with the batch).
        """
        return dict(check_weights=self.check_weights, keep_snapshot=self.restore_weights or self.forensics,
                    restore_when_fired=self.restore_weights, capture_batch=self.forensics)

    def _prepare_variables(self):
        """Finds the watched variables (weights and log_scale) and arms the device-side guard.

        The names are those `nan_forensics/` and its replay use (`model_variables`).
        """
        log_scale = self.run.log_scale.variable
        self._log_scale = None if log_scale is None else tf_variable(log_scale)
        self._all_variables = model_variables(self.model, log_scale)
        variables = [(name, variable) for name, variable in self._all_variables
                     if tf.as_dtype(variable.dtype).is_floating]
        self._variables = variables
        watched = [v for _, v in variables]
        index = next((i for i, v in enumerate(watched) if v is self._log_scale), None)
        self._step_guard = StepGuard.for_model(self.model, watched, log_scale_index=index,
                                               **self.step_guard_options())
        self._step_guard.reset(self.global_step)
        self._in_step = self._step_guard.install()
        self._step_guard.on_error = self.run.abort
        self.run.step_guard = self._step_guard

    def _prepare_trackers(self):
        """Keras's trackers, through the run's one reader; the guard checks the losses among them."""
        trackers = self.run.trackers()
        self._loss_state = [2 * index + part for index, name in enumerate(trackers.names)
                            if is_loss_name(name) for part in (0, 1)]

    def _build_train_check(self):
        """The batch hook's own compiled check, for when the step hands out no verdict; returns one.

        Under a strategy with several replicas the step is not wrapped and
        this is the guard (snapshot included), on the losses Keras logged
        (`logged_ok`) and its trackers'. A wrapped step whose `train_step`
        returns no dict has nowhere to put its verdict: this reads it.
        """
        guard = self._step_guard
        trackers = self.run.trackers()

        def check(logged_ok, step):
            if self._in_step:
                return guard.report(tf.constant(0))
            state = tf.gather(trackers.state(), tf.constant(self._loss_state, tf.int32))
            losses_ok = tf.logical_and(logged_ok, tf.reduce_all(tf.math.is_finite(state)))
            return guard.report(guard.check(losses_ok, step))

        # A concrete function: each batch skips tf.function's argument dispatch.
        signature = [tf.TensorSpec([], tf.bool), tf.TensorSpec([], tf.int64)]
        return tf.function(check, input_signature=signature, autograph=False).get_concrete_function()

    def _train_verdict(self, logs):
        """[first bad step, log_scale, tracker state...] after this batch: the step's verdict, else the hook's.

        The step's own check has seen every loss of the logs Keras hands on;
        the hook's checks them here.
        """
        guard = self._step_guard
        packed = guard.take_verdict() if self._in_step else None
        if packed is not None:
            if self._verdict_fits is None:  # the trackers the step reports are those the run reads
                self._verdict_fits = guard.tracker_names == self.run.trackers().names
            if self._verdict_fits:
                return packed
        if self._train_check is None:
            if self._loss_state is None:
                self._prepare_trackers()
            self._train_check = self._build_train_check()
        logged_ok = all(is_finite(v) for v in self._logged_losses(logs, prefix="").values())
        return self._train_check(tf.constant(logged_ok), tf.constant(self.global_step, tf.int64)).numpy()

    def _untracked_losses(self, logs, state):
        """The losses in `logs` that no tracker counts (a custom train step's own), as floats; {} for Keras's.

        Which they are is told by the fit's first batch: a tracker that
        counts a batch has a count above 0 after the first one (`state`).
        """
        if self._untracked is None:
            names = self.run.trackers().names
            counted = {name for index, name in enumerate(names) if state[2 * index + 1] > 0}
            self._untracked = [name for name in (logs or {}) if is_loss_name(name) and name not in counted]
        if not self._untracked:
            return {}
        return self._logged_losses({name: logs[name] for name in self._untracked if name in logs}, prefix="")

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._reset_state()
        self._in_fit = True
        if self.model.weights:
            self._prepare_variables()  # the snapshot holds the initial weights until a finite step

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)  # global_step now counts this batch
        if self.event is not None:
            return
        if self._variables is None:
            self._prepare_variables()  # a subclassed model is built by its first step
        packed = self._train_verdict(logs)
        first_bad = int(packed[0])
        log_scale = float(packed[1]) if self._log_scale is not None else None
        state = packed[HEAD:]  # Keras's tracker state after the step
        untracked = self._untracked_losses(logs, state)
        if first_bad < 0:
            # The batch's values are taken out of the notes in blocks (`Run.take_batches`), not here.
            self.run.note_batch(self.global_step, state, log_scale)
            if untracked:
                self._last_finite["train"].update(events.finite_only(untracked))
            return
        batches = self.run.batches
        self.run.take_batches()  # the finite batches before this one: their last finite values
        self._last_finite["train"].update((name, value) for name, value in batches.last_finite.items()
                                          if is_loss_name(name) or name == LOG_SCALE)
        self.run.note_batch(self.global_step, state, log_scale)
        self.run.take_batches()
        values = self._batch_losses(batches.last, untracked)
        if log_scale is not None:
            values[LOG_SCALE] = log_scale
        self._on_event("train", first_bad - self._epoch_start_step - 1, values, step=first_bad)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._stop_at_epoch_end:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        if not self._in_fit:  # an evaluation of its own: the run is open for its length
            self.run.begin(self)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, logs)
        if self.event is not None or not self.check_validation:
            return
        values = self._batch_losses(self.run.trackers().read(prefix="val_"),
                                    self._logged_losses(logs, prefix="val_"))
        if all(is_finite(v) for v in values.values()):
            self._last_finite["val"].update(events.finite_only(values))
            return
        self._on_event("val", batch, values)

    def on_test_end(self, logs=None):
        super().on_test_end(logs)
        if not self._in_fit:
            self.run.end(self)

    def on_train_end(self, logs=None):
        self._restore_over_the_averages()
        self._end_fit()
        super().on_train_end(logs)

    def _restore_over_the_averages(self):
        """Puts the last finite weights back again when the end of fit wrote non-finite ones over them.

        An optimizer with `use_ema=True` writes its moving averages over the
        weights when fit ends, before `on_train_end`; the failing step made
        those averages non-finite, and the optimizer's state is not rolled back.
        """
        if self.event is None or not self.event.get("weights_restored"):
            return
        if all(np.all(np.isfinite(variable.numpy())) for _, variable in self._variables):
            return
        self._step_guard.restore()
        restored = events.restore_note(self._step_guard.snapshot_step_value(), self._fit_start_step, True).strip()
        self.announce("warning", "weights_restored_after_averaging",
                      "the optimizer's moving averages (use_ema) were non-finite after the NaN step and Keras wrote "
                      f"them over the weights at the end of fit (step {self.global_step}). {restored[:-1]} again, "
                      "without averaging.", "the NaN event; re-compile before training on")

    def on_fit_exception(self, error):
        self._end_fit()
        super().on_fit_exception(error)

    def _end_fit(self):
        self._in_fit = False
        if self._step_guard is not None:
            self._step_guard.uninstall()
            self._step_guard.release()

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
                value = events.as_float(value)
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

    def _on_event(self, phase, batch, values, step=None):
        bad = self._nonfinite_variables() if phase == "train" else []
        event = events.build_event(self.epoch, batch, self.global_step if step is None else step, phase, values,
                                   self._last_finite[phase], bad, self.check_weights)
        notes = ""
        if phase == "train" and self.restore_weights:
            notes = self._restore(event)
        if phase == "train" and self.forensics and self.log_dir is not None:
            notes += self._collect_forensics(event)
        self.event = event
        self.record.nan_events.append(event)
        self.record.status = "stopped_nan"

        message = events.message(event, self.on_nan, self._in_fit, notes)
        self._write_tensorboard(event, message)
        if self.verbose:
            print(message, flush=True)
        if self.on_nan == "raise":
            # Keras calls no on_train_end on the way out: give the model its own step back now.
            self._end_fit()
            self.run.flush()
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
        from .capture import write_forensics
        from .replay import replay

        guard = self._step_guard
        # The snapshot holds the floating-point variables; the others (a complex probe) are as they are.
        snapshot = {id(variable): value for (_, variable), value in zip(self._variables, guard.snapshot_values() or [])}
        before = [(name, snapshot[id(variable)] if id(variable) in snapshot else variable.numpy())
                  for name, variable in self._all_variables]
        batch = guard.captured_batch()
        try:
            if batch is None:
                if not guard.installed:
                    reason = "the train step was not wrapped (a strategy with several replicas): no batch captured"
                elif not guard.captures_batch:
                    reason = "the batch was not captured: the step ran under XLA (jit_compile=True)"
                else:
                    reason = "the non-finite value appeared between steps (assigned outside the train step)"
                result = {"stage": "n/a", "reason": reason}
            else:
                result = replay(self.model, batch, weights=before, variables=self._all_variables)
            folder = write_forensics(self.log_dir, self.model, batch, before, self._optimizer_state(), event,
                                     max_bytes=self.forensics_max_bytes, involved_samples=result.get("samples"),
                                     variables=self._all_variables, config=self.record.config)
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
        if self._step_guard is None or self._step_guard.snapshot is None:
            return " No weights were restored: no snapshot exists (the model had no weights at train begin)."
        self._step_guard.restore()
        event["weights_restored"] = True
        snapshot_step = self._step_guard.snapshot_step_value()
        event["restored_after_step"] = snapshot_step if snapshot_step > self._fit_start_step else None
        optimizer_finite = all(np.all(np.isfinite(value)) for _, value in self._optimizer_state()
                               if np.issubdtype(value.dtype, np.floating))
        return events.restore_note(snapshot_step, self._fit_start_step, optimizer_finite)

    def _write_tensorboard(self, event, message):
        markdown = message.replace("NaNGuard: ", f"**NaNGuard ({event['phase']})**: ", 1)
        with self.run.summaries("train") as writer, tf.summary.record_if(True):
            if writer is not None:
                tf.summary.text("nan/event", markdown, step=event["step"])
                tf.summary.scalar("nan/first_step", float(event["step"]), step=event["step"])
                writer.flush()
