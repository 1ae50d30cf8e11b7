"""Rows of per-batch scalars written to TensorBoard in one compiled call.

An eager `tf.summary.scalar` goes through Python and op dispatch for every
value; written per batch for every component, that is a visible share of a
small model's step. The run gathers the batches' values on the host and
hands them here in blocks (`Run.take_batches`), which `write_rows` writes
with one compiled call per 64 rows (`benchmarks/rows.py` measures it,
`benchmarks/hooks.py` the hooks).

A row goes out as one event: a serialized `Summary` holding every value of
the row, as `tf.summary.scalar` would write each of them (tag, float32
scalar tensor, the scalar plugin's metadata), written by one
`WriteRawProtoSummary` op at the row's step. The rows are serialized in
numpy: a template row is serialized once per set of tags, and each row is a
copy of it with its float32 bytes put in place. Should a template not check
out, the rows are written one `WriteSummary` op per value instead.

The compiled writers take the summary writer (and the per-value one the
tags) as arguments, so one trace serves every writer of the process: a
sweep that opens a new run directory (a new writer) for every fit traces
it once, not once per fit.
"""

import functools

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

# What tf.summary.scalar attaches, so that TensorBoard's Scalars dashboard shows the rows.
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()

# Sentinel i (i below _MAX_COLUMNS) has the little-endian bytes (i & 255, i >> 8, 0xFF, 0x7E): a finite float32
# near 1.7e38 whose 0xFF byte never occurs in UTF-8, so no tag can hold one; the template check still looks.
_SENTINEL_BITS = 0x7EFF0000
_MAX_COLUMNS = 1 << 16

# Rows per call of the compiled raw writer (as many as the run takes in one block).
_SLOTS = 64


def write_rows(writer, steps, tags, values):
    """Writes n rows to `writer` now: row i holds `values[i]` ([n, len(tags)]) for `tags` at `steps[i]`.

    Each row is one event, its values float32 as `tf.summary.scalar`
    writes them (beyond float32's range is +-inf). Nothing for no tags or
    no rows.

    Example:
    >>> write_rows(tf.summary.create_file_writer("logs/train"), [1, 2], ("loss/batch/loss",), [[0.5], [0.45]])
    """
    tags = tuple(tags)
    steps = np.asarray(steps, np.int64).reshape(-1)
    values = _as_float32(values)
    if values.shape != (len(steps), len(tags)):
        raise ValueError(f"values must have the shape (len(steps), len(tags)) = {(len(steps), len(tags))}, "
                         f"got {values.shape}")
    if not tags or not len(steps):
        return
    # `_resource` is the handle of the writer's SummaryWriter resource (TensorFlow's summary writers have
    # no public accessor); passed as an argument, it lets one compiled function serve every writer.
    template = _row_template(tags)
    if template is None:
        _row_writer(len(tags))(writer._resource, steps, values, np.asarray(tags, object))
    else:
        _write_serialized(writer._resource, steps, template.fill(values))


def write_scalars(writer, step, values):
    """Writes the scalars `values` ({tag: number}) at `step` to `writer` now, as `tf.summary.scalar` would,
    in one compiled call rather than one eager op per value (nothing for an empty `values`)."""
    tags = tuple(values)
    write_rows(writer, [int(step)], tags, [[values[tag] for tag in tags]])


def _as_float32(rows):
    with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as tf.summary.scalar writes it
        return np.asarray(rows, np.float64).astype(np.float32)


class _RowTemplate:
    """A serialized `Summary` of one row of tags, and where each value's 4 float32 bytes sit in it."""

    def __init__(self, serialized, offsets):
        self.bytes = np.frombuffer(serialized, np.uint8)
        # Byte positions [columns, 4] of every value, for one fancy-indexed write of all of them.
        self.positions = np.asarray(offsets, np.intp)[:, None] + np.arange(4)

    def fill(self, values):
        """The serialized rows of `values` [rows, columns] (float32), as a numpy bytes array [rows]."""
        rows = np.tile(self.bytes, (len(values), 1))
        rows[:, self.positions] = np.ascontiguousarray(values, "<f4").view(np.uint8).reshape(len(values), -1, 4)
        return rows.view(f"S{rows.shape[1]}").reshape(-1)


@functools.cache
def _row_template(tags):
    """The `_RowTemplate` of `tags`, or None when its serialization does not check out.

    Built once per tuple of tags: the values of the template are sentinels
    whose bytes are then looked up, so the offsets come from the protobuf
    library's own serialization rather than from a layout assumed here.
    """
    if len(tags) >= _MAX_COLUMNS:
        return None
    sentinels = (_SENTINEL_BITS + np.arange(len(tags), dtype=np.uint32)).view("<f4")
    summary = summary_pb2.Summary()
    metadata = summary_pb2.SummaryMetadata.FromString(_SCALAR_METADATA)
    for tag, sentinel in zip(tags, sentinels):
        value = summary.value.add(tag=tag)
        value.metadata.CopyFrom(metadata)
        # As TensorFlow's WriteSummary writes a scalar: its dtype, an empty shape and the bytes as content.
        value.tensor.dtype = tf.float32.as_datatype_enum
        value.tensor.tensor_shape.SetInParent()
        value.tensor.tensor_content = sentinel.tobytes()
    serialized = summary.SerializeToString()
    offsets = _sentinel_offsets(serialized, tags, sentinels)
    return None if offsets is None else _RowTemplate(serialized, offsets)


def _sentinel_offsets(serialized, tags, sentinels):
    """Where each sentinel's bytes are in `serialized`, or None unless the template is sound.

    Sound: it parses back to the tags with their sentinels and the scalar
    metadata, every sentinel's bytes occur in it exactly once, and its last
    byte is no value's and not zero (numpy drops the trailing zero bytes of
    a bytes array's items).
    """
    parsed = summary_pb2.Summary.FromString(serialized)
    if [value.tag for value in parsed.value] != list(tags):
        return None
    offsets = []
    for value, sentinel in zip(parsed.value, sentinels):
        pattern = sentinel.tobytes()
        offset = serialized.find(pattern)
        if (value.tensor.tensor_content != pattern or value.metadata.SerializeToString() != _SCALAR_METADATA
                or offset < 0 or serialized.find(pattern, offset + 1) >= 0):
            return None
        offsets.append(offset)
    if serialized[-1] == 0 or any(offset + 4 >= len(serialized) for offset in offsets):
        return None
    return offsets


def _write_serialized(writer, steps, rows):
    """Writes the serialized rows [n] at `steps` [n], in calls of `_SLOTS` rows of the one compiled writer."""
    write = _raw_row_writer()
    for start in range(0, len(rows), _SLOTS):
        chunk = rows[start:start + _SLOTS]
        padded_steps = np.zeros(_SLOTS, np.int64)
        padded_steps[:len(chunk)] = steps[start:start + _SLOTS]
        counts = (np.arange(_SLOTS) < len(chunk)).astype(np.int32)
        # Made tensors here: the concrete function converts numpy arguments by a slower path.
        write(writer, tf.constant(padded_steps), tf.constant(chunk), tf.constant(counts))


@functools.cache
def _raw_row_writer():
    """The compiled function of the process that writes up to `_SLOTS` serialized rows at their steps.

    Arguments: the summary writer's resource handle, the steps [_SLOTS]
    (padded), the serialized rows [n <= _SLOTS] and each slot's count of
    rows [_SLOTS] (1 for the first n, then 0). A `WriteRawProtoSummary`
    op writes every proto it is given at one step, so each row needs an op
    of its own: the ops are laid out one per slot rather than run in a
    compiled loop, whose every turn costs more than many such ops; a slot
    given no row writes nothing.
    """
    def write(writer, steps, rows, counts):
        # tf.function runs the ops that use one resource in the order they were traced: the rows keep theirs.
        for step, row in zip(tf.unstack(steps, num=_SLOTS), tf.split(rows, counts, num=_SLOTS)):
            tf.raw_ops.WriteRawProtoSummary(writer=writer, step=step, tensor=row)

    signature = [tf.TensorSpec([], tf.resource), tf.TensorSpec([_SLOTS], tf.int64), tf.TensorSpec([None], tf.string),
                 tf.TensorSpec([_SLOTS], tf.int32)]
    return tf.function(write, input_signature=signature, autograph=False).get_concrete_function()


@functools.cache
def _row_writer(columns):
    """The compiled function of the process that writes rows of `columns` scalars (one per tag) at their steps,
    one `WriteSummary` op per value: the path for tags whose row template does not check out.

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
