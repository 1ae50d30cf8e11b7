"""ScalarBuffer: per-batch scalars gathered on the host and written to TensorBoard in one call.

An eager `tf.summary.scalar` goes through Python and op dispatch for every
value; written per batch for every component, that is a visible share of a
small model's step. The buffer keeps the rows as numpy and writes them with
one compiled call per flush (`benchmarks/hooks.py` measures the hooks).

The compiled writer takes the summary writer and the tags as arguments, so
one trace serves every buffer of the process: a sweep that opens a new run
directory (a new writer) for every fit traces it once, not once per fit.
"""

import functools
import time

import numpy as np
import tensorflow as tf
from tensorboard.plugins.scalar import metadata as scalar_metadata

# What tf.summary.scalar attaches, so that TensorBoard's Scalars dashboard shows the rows.
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()


class ScalarBuffer:
    """Rows of {tag: value} at a step, written to one summary writer in batches.

    A row is written at the latest `max_rows` rows or `max_seconds` seconds
    after the oldest pending one (so TensorBoard stays live), whenever the
    set of tags changes (so every tag's steps reach the file in order), and
    on `flush()`, which the callbacks call at each epoch end and before they
    release their writers (also when `fit` ends by an exception).

    Args:
        writer: the `tf.summary` writer to write to (made by
            `tf.summary.create_file_writer`).
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
        if not self._steps:
            self._oldest = time.monotonic()
        self._steps.append(int(step))
        self._rows.append(_row(values, tags))
        if len(self._steps) >= self.max_rows or time.monotonic() - self._oldest >= self.max_seconds:
            self.flush()

    def add_rows(self, steps, tags, values):
        """Adds rows: the scalars `values[i]` (one per tag of `tags`) at `steps[i]`."""
        for step, row in zip(steps, values):
            self.add(step, dict(zip(tags, row)))

    def flush(self):
        """Writes the pending rows (nothing when there are none)."""
        if not self._steps:
            return
        _write_rows(self._writer, self._steps, self._rows, self._tags)
        self._steps, self._rows = [], []


def write_scalars(writer, step, values):
    """Writes the scalars `values` ({tag: number}) at `step` to `writer` now, as `tf.summary.scalar` would,
    in one compiled call rather than one eager op per value (nothing for an empty `values`)."""
    tags = tuple(values)
    if tags:
        _write_rows(writer, [int(step)], [_row(values, tags)], tags)


def _row(values, tags):
    return [values[tag] for tag in tags]  # made float32 at the write, with every row of it at once


def _write_rows(writer, steps, rows, tags):
    # `_resource` is the handle of the writer's SummaryWriter resource (TensorFlow's summary writers have
    # no public accessor); passed as an argument, it lets one compiled function serve every writer.
    with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as tf.summary.scalar writes it
        values = np.asarray(rows, np.float64).astype(np.float32)
    _row_writer(len(tags))(writer._resource, np.asarray(steps, np.int64), values, np.asarray(tags, object))


@functools.cache
def _row_writer(columns):
    """The compiled function of the process that writes rows of `columns` scalars (one per tag) at their steps.

    Arguments: the summary writer's resource handle, the steps [rows], the
    values [rows, columns] and the tags [columns]. Traced once per number
    of columns in the process, not per writer or set of tags; a loop turn
    writes a whole row, since each turn of a compiled loop costs more than
    the writes in it.
    """
    def write(writer, steps, rows, tags):
        def write_row(index):
            for column in range(columns):
                tf.raw_ops.WriteSummary(writer=writer, step=steps[index], tensor=rows[index, column],
                                        tag=tags[column], summary_metadata=_SCALAR_METADATA)
            return (index + 1,)

        tf.while_loop(lambda index: index < tf.shape(steps)[0], write_row, (tf.constant(0),))

    signature = [tf.TensorSpec([], tf.resource), tf.TensorSpec([None], tf.int64),
                 tf.TensorSpec([None, columns], tf.float32), tf.TensorSpec([columns], tf.string)]
    return tf.function(write, input_signature=signature, autograph=False).get_concrete_function()
