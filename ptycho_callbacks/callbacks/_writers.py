"""One `tf.summary` writer per TensorBoard run directory, shared by our callbacks.

TensorBoard follows one live event file per directory: callbacks that each
opened a writer on the same directory would hide one another's data, so they
borrow the same writer and the last to leave closes it.
"""

import os
import threading

import tensorflow as tf

_lock = threading.Lock()
_writers = {}


def tensorboard_dir(log_dir, run):
    """Where our event files for `run` ("train" or "validation") live under `log_dir`."""
    return os.path.join(log_dir, "ptycho", run)


def acquire(log_dir, run="train"):
    """Returns the shared writer of `log_dir`'s `run`, opening it if needed."""
    path = os.path.abspath(tensorboard_dir(log_dir, run))
    with _lock:
        entry = _writers.get(path)
        if entry is None:
            entry = _writers[path] = [tf.summary.create_file_writer(path), 0]
        entry[1] += 1
        return entry[0]


def release(log_dir, run="train"):
    """Gives the writer back; flushes it and closes it once nobody holds it."""
    path = os.path.abspath(tensorboard_dir(log_dir, run))
    with _lock:
        entry = _writers.get(path)
        if entry is None:
            return
        entry[1] -= 1
        entry[0].flush()
        if entry[1] <= 0:
            entry[0].close()
            del _writers[path]
