"""What every callback of ours shares: the run record, the summary writers, the step count."""

import json
import os

import numpy as np

from .._keras import keras
from ..record import RunRecord
from . import _writers
from .batch_values import variable_value
from .scalar_buffer import ScalarBuffer


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


def summary_value(value):
    """`value` as the numpy float32 a summary stores (out of float32 range becomes +-inf).

    TensorFlow keeps every Python float it turns into an eager constant, so
    writing a new Python float each step grows host memory without bound
    (~0.7 kB a value); a numpy scalar is not kept.
    """
    with np.errstate(over="ignore"):
        return np.float32(value)


def is_chief():
    """True unless this process is a non-chief task of a multi-worker training.

    Multi-worker strategies describe the cluster in `TF_CONFIG`; the chief is
    the task of type "chief", or worker 0 when the cluster has no chief (the
    rule Keras's own callbacks follow). Only the chief writes.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    kind = task.get("type")
    if not kind or kind == "chief":
        return True
    return kind == "worker" and int(task.get("index", 0)) == 0 and "chief" not in (config.get("cluster") or {})


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
    """Base of our callbacks: a thin adapter that feeds one `RunRecord`.

    Callbacks built by `default_callbacks` share one record and one log
    directory; a callback used alone makes its own record. `global_step` is
    the optimizer's step count after the batch just done (exact with
    `steps_per_execution > 1`).

    Args:
        log_dir: run directory for TensorBoard logs; None writes no logs
            (nor does a non-chief worker of a multi-worker training).
        record: the `RunRecord` to fill; a new one (named after `log_dir`)
            if None.
    """

    def __init__(self, log_dir=None, record=None):
        super().__init__()
        self.is_chief = is_chief()
        if not self.is_chief:
            log_dir = None  # another worker of a multi-worker training: the chief writes the run
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
        self._epoch_start_step = self._fit_start_step = 0
        self._writers = {}
        self._scalar_buffers = {}
        self.verbose = 0

    def announce(self, level, code, message, look_at):
        """Adds a finding to the record and, when verbose, prints it as one line that says where to look."""
        self.record.add_finding(level, code, message)
        if self.verbose:
            print(f"{type(self).__name__}: {message} See {look_at}.", flush=True)

    def writer(self, run="train"):
        """The shared summary writer of this run's `run` directory, or None without log_dir."""
        if self.log_dir is None:
            return None
        if run not in self._writers:
            self._writers[run] = _writers.acquire(self.log_dir, run)
        return self._writers[run]

    def write_batch_scalars(self, values, run="train"):
        """Queues the scalars {tag: value} at `global_step` for `run`; they reach TensorBoard in batches.

        Per-batch series go through a `ScalarBuffer` (one compiled write per
        flush instead of an eager summary per value); it is flushed at each
        epoch end and when the writers are released.
        """
        if self.log_dir is None:
            return
        buffer = self._scalar_buffers.get(run)
        if buffer is None:
            buffer = self._scalar_buffers[run] = ScalarBuffer(self.writer(run))
        buffer.add(self.global_step, values)

    def flush_scalars(self):
        """Writes every queued per-batch scalar now."""
        for buffer in self._scalar_buffers.values():
            buffer.flush()

    def on_train_begin(self, logs=None):
        self.global_step = self._fit_start_step = optimizer_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._epoch_start_step = self.global_step

    def on_train_batch_end(self, batch, logs=None):
        # Keras passes the index of the last batch the call ran, also when
        # one call runs several steps (steps_per_execution > 1).
        self.global_step = self._epoch_start_step + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        self.flush_scalars()

    def on_fit_exception(self, error):
        """`fit` was left by `error` (Keras calls no `on_train_end` then; see `finish_on_exception`)."""
        self.release_writers()

    def release_writers(self):
        """Writes the queued scalars, then flushes and returns every writer this callback borrowed."""
        self.flush_scalars()
        self._scalar_buffers = {}
        for run in self._writers:
            _writers.release(self.log_dir, run)
        self._writers = {}

    def get_config(self):
        return {"log_dir": self.log_dir}
