"""The value of each loss for THIS batch, out of the running means Keras logs.

Both Keras 3 and tf_keras hand batch hooks running means over the epoch so
far. Their `Mean` trackers keep a `total` and a `count`; the change of both
over one batch gives that batch's value exactly, whatever weights Keras used.
"""

import numpy as np


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

    Example:
    >>> values = BatchValues(model)   # in on_train_begin or the first batch
    >>> values.reset()                # at each epoch start
    >>> values.read()                 # in on_train_batch_end
    {'loss': -3.9e6, 'pred_intensity_loss': -3.9e6, ...}
    """

    def __init__(self, model):
        self._states = {}
        for metric in model.metrics:
            state = _mean_state(metric)
            if state is not None:
                self._states[metric.name] = state
        self._previous = {}
        self.reset()

    @property
    def names(self):
        return list(self._states)

    def reset(self):
        """Forget the previous totals: Keras resets its trackers at epoch and evaluation start."""
        self._previous = {name: (0.0, 0.0) for name in self._states}

    def read(self):
        """Returns {metric name: value of the last batch}; a metric that counted no sample is left out."""
        values = {}
        for name, (total_var, count_var) in self._states.items():
            total, count = float(np.asarray(total_var)), float(np.asarray(count_var))
            previous_total, previous_count = self._previous[name]
            self._previous[name] = (total, count)
            added = count - previous_count
            if added > 0:
                values[name] = (total - previous_total) / added
        return values
