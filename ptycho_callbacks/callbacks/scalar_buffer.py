"""ScalarBuffer: per-batch scalars gathered on the host and written to TensorBoard in one call.

An eager `tf.summary.scalar` goes through Python and op dispatch for every
value; written per batch for every component, that is a visible share of a
small model's step. The buffer keeps the rows as numpy and writes them with
one compiled call per flush (`benchmarks/hooks.py` measures the hooks).
"""

import time

import numpy as np
import tensorflow as tf
from tensorboard.plugins.scalar import metadata as scalar_metadata


class ScalarBuffer:
    """Rows of {tag: value} at a step, written to one summary writer in batches.

    A row is written at the latest `max_rows` rows or `max_seconds` seconds
    after the oldest pending one (so TensorBoard stays live), whenever the
    set of tags changes (so every tag's steps reach the file in order), and
    on `flush()`, which the callbacks call at each epoch end and before they
    release their writers (also when `fit` ends by an exception).

    Args:
        writer: the `tf.summary` writer to write to.
        max_rows: most rows held before a write.
        max_seconds: most seconds a row is held before a write.

    Example:
    >>> buffer = ScalarBuffer(tf.summary.create_file_writer("logs/train"))
    >>> buffer.add(1, {"loss/batch/loss": 0.5, "loss/batch/pred_intensity_loss": 0.4})
    >>> buffer.flush()
    """

    def __init__(self, writer, max_rows=64, max_seconds=10.0):
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows!r}")
        self._writer = writer
        self.max_rows = int(max_rows)
        self.max_seconds = float(max_seconds)
        self._tags = None
        self._steps = []
        self._rows = []
        self._oldest = None
        self._write_functions = {}

    def __len__(self):
        return len(self._steps)

    def add(self, step, values):
        """Adds the scalars `values` ({tag: number}) at `step` (nothing for an empty `values`)."""
        tags = tuple(values)
        if not tags:
            return
        if tags != self._tags:
            self.flush()
            self._tags = tags
            self._write_function(tags)  # compiled and run once now, not at a later batch
        if not self._steps:
            self._oldest = time.monotonic()
        self._steps.append(int(step))
        with np.errstate(over="ignore"):
            self._rows.append(np.asarray([values[tag] for tag in tags], np.float32))
        if len(self._steps) >= self.max_rows or time.monotonic() - self._oldest >= self.max_seconds:
            self.flush()

    def flush(self):
        """Writes the pending rows (nothing when there are none)."""
        if not self._steps:
            return
        write = self._write_function(self._tags)
        write(np.asarray(self._steps, np.int64), np.stack(self._rows))
        self._steps, self._rows = [], []

    def _write_function(self, tags):
        write = self._write_functions.get(tags)
        if write is None:
            signature = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, len(tags)], tf.float32)]
            write = tf.function(_RowWriter(self._writer, tags), input_signature=signature, autograph=False)
            write = self._write_functions[tags] = write.get_concrete_function()
            write(np.zeros([0], np.int64), np.zeros([0, len(tags)], np.float32))  # the first call sets up the graph
        return write


class _RowWriter:
    """Writes rows of scalars (one column per tag) at their steps; compiled by `ScalarBuffer`.

    A callable object rather than a closure: TensorFlow counts the traces of
    all closures of one function together and would warn of retracing when
    many fits each compile their own writer.
    """

    # What tf.summary.scalar would attach; written with tf.summary.write
    # because the loop's name scope would otherwise prefix every tag.
    METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()

    def __init__(self, writer, tags):
        self.writer, self.tags = writer, tags

    def __call__(self, steps, rows):
        def write_row(index):
            for column, tag in enumerate(self.tags):
                tf.summary.write(tag, rows[index, column], step=steps[index], metadata=self.METADATA)
            return (index + 1,)

        with self.writer.as_default():
            tf.while_loop(lambda index: index < tf.shape(steps)[0], write_row, (tf.constant(0),))
