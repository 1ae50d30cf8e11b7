"""BatchLog: what the batch hooks note, turned into each batch's values in numpy blocks.

A batch hook runs between two training steps, on the training's own
thread: whatever it does, the next step waits for. So the hooks only note
what the step handed out (`BatchLog.note`: the optimizer step, Keras's
loss-tracker state, `log_scale`), and the values of each batch, the
callbacks' TensorBoard columns and the run record's batch history are
computed for a whole block of batches at once (`BatchLog.take`): at each
epoch end, before Keras resets its trackers, every `max_rows` batches or
`max_seconds` seconds (so that TensorBoard stays live), and when the run
closes. Nothing here needs TensorFlow.
"""

import time
from dataclasses import dataclass

import numpy as np


def tracker_batch_values(states, previous):
    """Each batch's value of each of Keras's mean trackers, from their states after each batch.

    Keras hands hooks running means over the epoch so far; a `Mean`
    tracker's `total` and `count` after two batches give the batch's own
    value exactly: (total - total before) / (count - count before).

    Args:
        states: [batches, 2 * trackers], (total, count) of each tracker after
            each batch, in order.
        previous: [2 * trackers], the state before the first batch (zeros
            after Keras reset its trackers).

    Returns:
        (values, counted), both [batches, trackers]: a tracker that counted
        no sample in a batch is not `counted` there, and its value is NaN.
    """
    states = np.asarray(states, np.float64)
    before = np.vstack([np.asarray(previous, np.float64)[None], states[:-1]])
    totals = states[:, 0::2] - before[:, 0::2]
    counts = states[:, 1::2] - before[:, 1::2]
    counted = counts > 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = np.where(counted, totals / np.where(counted, counts, 1.0), np.nan)
    return values, counted


@dataclass
class Block:
    """The batches noted since the last `take`, in step order.

    Attributes:
        steps: int64 [n], the optimizer step after each batch.
        values: {tracker name: masked float64 [n]}, each batch's value;
            masked where the tracker counted nothing or no state was noted.
        log_scale: masked float64 [n]; masked where none was noted.
    """

    steps: np.ndarray
    values: dict
    log_scale: np.ma.MaskedArray

    def __len__(self):
        return len(self.steps)


def row_groups(steps, columns):
    """The columns {tag: masked [n]} as TensorBoard rows: [(steps, tags, values [rows, tags])].

    Each group is a run of consecutive batches that have the same tags (a
    masked entry is no point); batches with none are left out. The groups
    keep the step order, so every tag's points reach the file in order.
    """
    tags = [tag for tag, column in columns.items() if not np.ma.getmaskarray(column).all()]
    if not tags:
        return []
    present = np.stack([~np.ma.getmaskarray(columns[tag]) for tag in tags], axis=1)
    values = np.stack([np.ma.getdata(columns[tag]).astype(np.float64) for tag in tags], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(present[1:] != present[:-1], axis=1)])
    groups = []
    for start, stop in zip(starts, np.r_[starts[1:], len(steps)]):
        kept = present[start]
        if kept.any():
            groups.append((steps[start:stop], tuple(t for t, k in zip(tags, kept) if k),
                           values[start:stop][:, kept]))
    return groups


class BatchLog:
    """The per-batch notes of one fit, and the values of the batches taken out of them.

    Args:
        max_rows: notes held before `due()` says to take them.
        max_seconds: seconds the oldest note is held before `due()` says so.

    Example:
    >>> log = BatchLog()
    >>> log.note(1, state=np.array([2.0, 1.0]), log_scale=0.5)   # in a batch hook
    >>> block = log.take(["loss"])                                # at an epoch end
    >>> float(block.values["loss"][0])
    2.0
    """

    def __init__(self, max_rows=64, max_seconds=10.0):
        self.max_rows = int(max_rows)
        self.max_seconds = float(max_seconds)
        self._steps, self._states, self._scales = [], [], []
        self._oldest = None
        self._taken = None  # (step, state, log_scale) of the last batch taken: a second note of it is not new
        self._previous = None  # tracker state before the next batch to take (None: zeros, after a reset)
        self.last = {}
        """{name: value} of the last batch taken (trackers counted in it, and log_scale)."""
        self.last_finite = {}
        """{name: the last finite value} over the batches taken in this fit (trackers and log_scale)."""

    def __len__(self):
        return len(self._steps)

    def note(self, step, state=None, log_scale=None):
        """Notes what is known after the batch ending at optimizer step `step`.

        `state` is Keras's tracker state (`BatchValues.state()`, read on the
        host), `log_scale` the variable's value; a second note of the same
        step adds what the first lacked.
        """
        if not self._steps or self._steps[-1] != step:
            if not self._steps:
                self._oldest = time.monotonic()
            self._steps.append(step)
            self._states.append(state)
            self._scales.append(log_scale)
            return
        if state is not None:
            self._states[-1] = state
        if log_scale is not None:
            self._scales[-1] = log_scale

    def has_state(self, step):
        """True when a tracker state was noted for `step` (also if taken already)."""
        return self._noted(step, 1)

    def has_log_scale(self, step):
        """True when `log_scale` was noted for `step` (also if taken already)."""
        return self._noted(step, 2)

    def _noted(self, step, part):
        """Whether part `part` (1: state, 2: log_scale) of the note of `step` is there, if it is the latest."""
        latest = (self._steps[-1], self._states[-1], self._scales[-1]) if self._steps else self._taken
        return latest is not None and latest[0] == step and latest[part] is not None

    def due(self, step):
        """True when the notes should be taken before `step` is noted: `max_rows` of them, or the oldest
        `max_seconds` old, and `step` a new one (every callback's note of a step goes into one block)."""
        return bool(self._steps) and self._steps[-1] != step and (
            len(self._steps) >= self.max_rows or time.monotonic() - self._oldest >= self.max_seconds)

    def reset(self):
        """Keras reset its trackers: the next batch's state counts from zero. Take the notes before."""
        self._previous = None

    def take(self, names):
        """The batches noted since the last take, as a `Block` (None when there are none); forgets the notes.

        `names` are the trackers' names, in the order of the noted states.
        A batch noted without a state has no tracker values; the next state
        is then taken against the last one noted (its values cover the
        batches between, as Keras's running means would).
        """
        if not self._steps:
            return None
        steps = np.asarray(self._steps, np.int64)
        width = 2 * len(names)
        values = np.full((len(steps), len(names)), np.nan)
        counted = np.zeros(values.shape, bool)
        with_state = [i for i, state in enumerate(self._states) if state is not None]
        if with_state and width:
            states = np.stack([np.asarray(self._states[i], np.float64)[:width] for i in with_state])
            previous = np.zeros(width) if self._previous is None else self._previous
            values[with_state], counted[with_state] = tracker_batch_values(states, previous)
            self._previous = states[-1]
        scales = np.ma.masked_array([np.nan if s is None else s for s in self._scales],
                                    mask=[s is None for s in self._scales], dtype=np.float64)
        block = Block(steps, {name: np.ma.masked_array(values[:, j], mask=~counted[:, j])
                              for j, name in enumerate(names)}, scales)
        self._remember(block)
        self._taken = (self._steps[-1], self._states[-1], self._scales[-1])
        self._steps, self._states, self._scales = [], [], []
        return block

    def _remember(self, block):
        """Keeps the last batch's values and, per name, the last finite value."""
        columns = {**block.values, "log_scale": block.log_scale}
        self.last = {name: float(column[-1]) for name, column in columns.items()
                     if not np.ma.getmaskarray(column)[-1]}
        for name, column in columns.items():
            finite = np.flatnonzero(~np.ma.getmaskarray(column) & np.isfinite(np.ma.getdata(column)))
            if finite.size:
                self.last_finite[name] = float(np.ma.getdata(column)[finite[-1]])
