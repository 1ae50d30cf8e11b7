"""What every callback of ours shares: the run record, the summary writers, the step count."""

import os

from .._keras import keras
from ..record import RunRecord
from . import _writers


def check_writable_dir(log_dir):
    """Creates `log_dir` and proves it writable now, not hours into a training."""
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OSError(f"log directory {log_dir!r} cannot be written: {error}") from error


class RecordingCallback(keras.callbacks.Callback):
    """Base of our callbacks: a thin adapter that feeds one `RunRecord`.

    Callbacks built by `default_callbacks` share one record and one log
    directory; a callback used alone makes its own record.

    Args:
        log_dir: run directory for TensorBoard logs; None writes no logs.
        record: the `RunRecord` to fill; a new one (named after `log_dir`)
            if None.
    """

    def __init__(self, log_dir=None, record=None):
        super().__init__()
        if log_dir is not None:
            log_dir = os.fspath(log_dir)
            check_writable_dir(log_dir)
        self.log_dir = log_dir
        if record is None:
            name = os.path.basename(os.path.normpath(log_dir)) if log_dir else "run"
            record = RunRecord(scenario=name, base_dir=log_dir)
        self.record = record
        self.global_step = 0
        self.epoch = 0
        self._writers = {}

    def writer(self, run="train"):
        """The shared summary writer of this run's `run` directory, or None without log_dir."""
        if self.log_dir is None:
            return None
        if run not in self._writers:
            self._writers[run] = _writers.acquire(self.log_dir, run)
        return self._writers[run]

    def on_train_begin(self, logs=None):
        self.global_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.global_step += 1

    def release_writers(self):
        """Flushes and returns every writer this callback borrowed."""
        for run in self._writers:
            _writers.release(self.log_dir, run)
        self._writers = {}

    def get_config(self):
        return {"log_dir": self.log_dir}
