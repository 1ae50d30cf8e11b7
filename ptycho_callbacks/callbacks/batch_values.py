"""The value of each loss for THIS batch, out of the running means Keras logs.

Both Keras 3 and tf_keras hand batch hooks running means over the epoch so
far. Their `Mean` trackers keep a `total` and a `count`; the change of both
over one batch gives that batch's value exactly, whatever weights Keras used.
"""

import numpy as np
import tensorflow as tf

from ..batch_log import tracker_batch_values
from .variables import tf_variable

_ON_MODEL = "_ptycho_callbacks_tracker_state"
"""Attribute of a model holding (ids of its trackers' variables, the compiled `state` reading them), so that
every fit of the model reads them through one function traced once, not one traced per fit."""


def stacked(scalars, dtype):
    """The scalar tensors or variables `scalars` as one vector of `dtype` (inside a tf.function or not).

    Stacked first and cast once when they share a dtype: on a step this
    small, every op counts.
    """
    if not scalars:
        return tf.zeros([0], dtype)
    values = [tf.convert_to_tensor(v) for v in scalars]
    if any(v.dtype != values[0].dtype for v in values):
        values = [tf.cast(v, dtype) for v in values]
    return tf.cast(tf.stack(values), dtype)


def _mean_state(metric):
    variables = {v.name.split("/")[-1].split(":")[0]: v for v in metric.variables}
    if set(variables) >= {"total", "count"} and len(variables) == 2:
        return variables["total"], variables["count"]
    return None


class BatchValues:
    """Reads Keras's mean-type trackers (the loss and its components): their state, and per-batch values.

    Args:
        model: a compiled Keras model that has run at least one step (its
            metrics exist then).

    The train step's verdict carries the trackers' state after each step
    when `NaNGuard` guards it; without it, `read_state()` reads it (one
    compiled call). The run notes the states of the training batches and
    turns them into each batch's values in blocks (`BatchLog`);
    `read(prefix=...)` gives one batch's values at once (the validation
    batches the NaN guard checks).

    Example:
    >>> values = BatchValues(model)   # in the first on_train_batch_end
    >>> values.reset()                # at each epoch and evaluation start
    >>> values.read(prefix="val_")    # in on_test_batch_end
    {'val_loss': -3.9e6, 'val_pred_intensity_loss': -3.9e6, ...}
    """

    def __init__(self, model):
        self._model = model
        self._trackers = []
        for metric in model.metrics:
            state = _mean_state(metric)
            if state is not None:
                self._trackers.append((metric.name, tf_variable(state[0]), tf_variable(state[1])))
        self._previous = None
        self._compiled_state = None

    @property
    def names(self):
        return [name for name, _, _ in self._trackers]

    def reset(self):
        """Forget the previous totals: Keras resets its trackers at epoch and evaluation start."""
        self._previous = None

    def scalars(self):
        """The trackers' variables, (total, count) per tracker in order: what `state` stacks."""
        return [v for _, total, count in self._trackers for v in (total, count)]

    def state(self, dtype=tf.float32):
        """The trackers' (total, count) pairs as one vector; usable inside a tf.function."""
        return stacked(self.scalars(), dtype)

    def read_state(self):
        """`state()` now, as numpy, in one device-to-host read."""
        if self._compiled_state is None:
            self._compiled_state = self._model_state_function()
        return self._compiled_state().numpy()

    def read(self, prefix=""):
        """Returns {prefix + metric name: value of the last batch}, in one device-to-host read.

        A metric that counted no sample since the previous read is left out.
        """
        state = np.asarray(self.read_state(), np.float64)
        previous = np.zeros_like(state) if self._previous is None else self._previous
        values, counted = tracker_batch_values(state[None], previous)
        self._previous = state
        return {prefix + name: float(values[0, j]) for j, name in enumerate(self.names) if counted[0, j]}

    def _model_state_function(self):
        """The compiled `state` kept on the model, traced anew only when its trackers changed (a new compile).

        The variables are kept by their ids (the function holds them, so the ids stay theirs) rather than
        themselves, so that nothing walking the model's attributes takes them for the model's variables.
        """
        ids = tuple(id(variable) for _, total, count in self._trackers for variable in (total, count))
        kept = vars(self._model).get(_ON_MODEL)
        if kept is None or kept[0] != ids:
            kept = (ids, tf.function(self.state, autograph=False).get_concrete_function())
            # object.__setattr__ keeps it out of Keras's attribute tracking (and of saved models).
            object.__setattr__(self._model, _ON_MODEL, kept)
        return kept[1]
