"""The value of each loss for THIS batch, out of the running means Keras logs.

Both Keras 3 and tf_keras hand batch hooks running means over the epoch so
far. Their `Mean` trackers keep a `total` and a `count`; the change of both
over one batch gives that batch's value exactly, whatever weights Keras used.
"""

import tensorflow as tf

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
    """Reads per-batch values of a model's mean-type metrics (the loss and its components).

    Args:
        model: a compiled Keras model that has run at least one step (its
            metrics exist then).

    Our callbacks share one reader, the run's (`Run.trackers`): each batch's
    values are read from the device once, by the first callback that asks
    for that step (`read(step=...)`, or the NaN guard from the verdict the
    train step hands out, through `values_from(..., step=...)`), and the
    others get them from its cache.

    Example:
    >>> values = BatchValues(model)   # in the first on_train_batch_end
    >>> values.reset()                # at each epoch start
    >>> values.read()                 # in on_train_batch_end
    {'loss': -3.9e6, 'pred_intensity_loss': -3.9e6, ...}
    """

    def __init__(self, model):
        self._model = model
        self._trackers = []
        for metric in model.metrics:
            state = _mean_state(metric)
            if state is not None:
                self._trackers.append((metric.name, tf_variable(state[0]), tf_variable(state[1])))
        self._previous = {}
        self._compiled_state = None
        self._latest = None  # (step, prefix, values) of the latest read

    @property
    def names(self):
        return [name for name, _, _ in self._trackers]

    def reset(self):
        """Forget the previous totals: Keras resets its trackers at epoch and evaluation start."""
        self._previous = {}
        self._latest = None

    def scalars(self):
        """The trackers' variables, (total, count) per tracker in order: what `state` stacks."""
        return [v for _, total, count in self._trackers for v in (total, count)]

    def state(self, dtype=tf.float32):
        """The trackers' (total, count) pairs as one vector; usable inside a tf.function."""
        return stacked(self.scalars(), dtype)

    def values_from(self, state, prefix="", step=None):
        """{prefix + name: value of the last batch} from a `state()` read on the host.

        A metric that counted no sample since the previous read is left out.
        With `step`, the values are kept as that step's for `read(step=...)`.
        """
        values = {}
        for index, (name, _, _) in enumerate(self._trackers):
            total, count = float(state[2 * index]), float(state[2 * index + 1])
            previous_total, previous_count = self._previous.get(name, (0.0, 0.0))
            self._previous[name] = (total, count)
            if count > previous_count:
                values[prefix + name] = (total - previous_total) / (count - previous_count)
        self._latest = (step, prefix, values) if step is not None else None
        return dict(values)

    def latest(self, step, prefix=""):
        """The values already read at optimizer step `step` (with `prefix`), or None."""
        latest = self._latest
        if step is None or latest is None or latest[:2] != (step, prefix):
            return None
        return dict(latest[2])

    def read(self, prefix="", step=None):
        """Returns {prefix + metric name: value of the last batch}, in one device-to-host read.

        With `step` (the optimizer step after the batch), a second read at
        the same step returns the first one's values without reading again.
        """
        latest = self.latest(step, prefix)
        if latest is not None:
            return latest
        if self._compiled_state is None:
            self._compiled_state = self._model_state_function()
        return self.values_from(self._compiled_state().numpy(), prefix, step)

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
