"""RecordingCallback: the base of our callbacks, a thin adapter between Keras's hooks and one `Run`."""

import os
import warnings

import numpy as np

from .._keras import keras
from ..run import Run, is_chief
from ..run_dir import check_writable_dir
from .variables import variable_value


def summary_value(value):
    """`value` as the numpy float32 a summary stores (out of float32 range becomes +-inf).

    TensorFlow keeps every Python float it turns into an eager constant, so
    writing a new Python float each step would grow host memory without
    bound; a numpy scalar is not kept.
    """
    with np.errstate(over="ignore"):
        return np.float32(value)


def optimizer_step(model):
    """The optimizer's step count (`optimizer.iterations`), 0 for a model without optimizer.

    Read once at train begin: from there our callbacks count steps on the
    host, so the x axis of TensorBoard continues across `fit` calls, as
    Keras's own TensorBoard callback does.
    """
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    return 0 if iterations is None else int(variable_value(iterations))


class RecordingCallback(keras.callbacks.Callback):
    """Base of our callbacks: a thin adapter that feeds one `Run`.

    Callbacks built by `default_callbacks` share one run; a callback used
    alone makes its own, and callbacks used alone on the same model and
    `log_dir` share one (`Run.shared`). `global_step` counts the train steps
    done, the batch just done included, on from the optimizer's step count at
    train begin (exact with `steps_per_execution > 1`).

    Subclasses do their own work in a hook first and call the base's hook
    last in `on_train_end` (it may close the run).

    Args:
        run: the `Run` to feed; None makes one for `log_dir`.
        log_dir: run directory for TensorBoard logs when `run` is None; None
            writes no logs (nor does a non-chief worker of a multi-worker
            training).

    Raises:
        ValueError: both `run` and `log_dir` are given.
        OSError: `log_dir` cannot be written.
    """

    def __init__(self, run=None, log_dir=None):
        super().__init__()
        if run is not None and log_dir is not None:
            raise ValueError(f"give run or log_dir, not both: the run writes to {run.log_dir!r}")
        self.is_chief = is_chief()
        if log_dir is not None and self.is_chief:
            check_writable_dir(os.fspath(log_dir))  # now, not hours into a training
        self._run = run
        self._own_run = run is None
        self._log_dir = None if log_dir is None else os.fspath(log_dir)
        self.global_step = 0
        self.epoch = 0
        self._epoch_start_step = self._fit_start_step = 0
        self.verbose = 0
        self._not_numbers = set()

    @property
    def run(self):
        if self._run is None:
            self._run = Run(self._log_dir)
        return self._run

    @property
    def record(self):
        """The `RunRecord` this callback fills (the run's)."""
        return self.run.record

    @property
    def log_dir(self):
        return self.run.log_dir

    def set_model(self, model):
        super().set_model(model)
        if self._own_run and not self.run.is_open:
            self._run = Run.shared(model, self.run)
        self.run.attach(model)

    def announce(self, level, code, message, look_at):
        """Adds a finding to the record and, when verbose, prints it as one line that says where to look."""
        self.record.add_finding(level, code, message, step=self.global_step)
        if self.verbose:
            print(f"{type(self).__name__}: {message} See {look_at}.", flush=True)

    def numbers(self, logs):
        """The entries of Keras's `logs` that are one number, as floats.

        A custom `train_step` may log a vector or a string; such an entry is
        left out, with one warning per name, never an error in the training.
        """
        numbers = {}
        for name, value in (logs or {}).items():
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError(name)
                numbers[name] = float(np.asarray(value, dtype=np.float64).reshape(()))
            except (TypeError, ValueError):
                if name not in self._not_numbers:
                    self._not_numbers.add(name)
                    warnings.warn(f"{type(self).__name__}: the logged value {name!r} is not one number "
                                  f"({type(value).__name__}); it is left out of the record and TensorBoard",
                                  RuntimeWarning, stacklevel=2)
        return numbers

    def writer(self, name="train"):
        """The run's summary writer of TensorBoard run `name`, or None without log_dir."""
        return self.run.writer(name)

    def on_train_begin(self, logs=None):
        self.run.begin(self)
        self.global_step = self._fit_start_step = optimizer_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._epoch_start_step = self.global_step
        self.run.reset_trackers()

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the index of the last batch the call ran, also when
        # one call runs several steps (steps_per_execution > 1).
        self.global_step = self._epoch_start_step + batch + 1

    def on_test_begin(self, logs=None):
        self.run.reset_trackers()

    def on_epoch_end(self, epoch, logs=None):
        self.run.take_batches()

    def on_train_end(self, logs=None):
        self.run.end(self)

    def on_fit_exception(self, error):
        """`fit` was left by `error` (Keras calls no `on_train_end` then; see `finish_on_exception`)."""
        self.run.end(self)


class PeriodicCallback(RecordingCallback):
    """Base of callbacks that evaluate at train begin, every `every_n_epochs` epochs and at train end.

    The evaluation at train begin runs there (so that bad input fails before
    any training step) and is published at the first epoch's start, whose
    index is the number of completed epochs. The last completed epoch is
    evaluated at train end when it was not already. Subclasses implement
    `prepare()` (at train begin, before the first evaluation), `evaluate()`
    and `publish(result, completed_epochs)`.

    Args:
        every_n_epochs: epochs between evaluations (an integer >= 1).
        run, log_dir: as for `RecordingCallback`.

    Raises:
        ValueError: `every_n_epochs` is not an integer >= 1.
    """

    def __init__(self, every_n_epochs=1, run=None, log_dir=None):
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        super().__init__(run=run, log_dir=log_dir)
        self.every_n_epochs = every_n_epochs
        self.completed_epochs = None  # None until the first epoch of this fit ends
        self._published = None
        self._pending = None

    def prepare(self):
        """Called at train begin before the first evaluation."""

    def evaluate(self):
        raise NotImplementedError

    def publish(self, result, completed_epochs):
        raise NotImplementedError

    def _publish(self, result, completed_epochs):
        self._published = completed_epochs
        self.publish(result, completed_epochs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.completed_epochs = self._published = None
        self.prepare()
        self._pending = self.evaluate()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._pending is not None:
            self._publish(self._pending, epoch)
            self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.completed_epochs = epoch + 1
        if self.completed_epochs % self.every_n_epochs == 0:
            self._publish(self.evaluate(), self.completed_epochs)

    def on_train_end(self, logs=None):
        try:
            if self._pending is not None:
                self._publish(self._pending, 0)
                self._pending = None
            if self.completed_epochs is not None and self._published != self.completed_epochs:
                self._publish(self.evaluate(), self.completed_epochs)
        finally:
            super().on_train_end(logs)
