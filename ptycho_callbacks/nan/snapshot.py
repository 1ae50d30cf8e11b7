"""Snapshot: a device-side copy of a model's variables, kept flat.

The NaN guard copies the weights after every finite step, inside the train
step, and puts them back on the host when a step goes non-finite. Kept as one flat
vector per dtype rather than one copy per variable, the copy is one
assignment: the conditional that takes it has one input instead of one per
variable, which is what makes such a conditional slow to trace.
"""

import tensorflow as tf


class Snapshot:
    """One flat copy per dtype of `variables`, saved inside a tf.function (or eagerly) and put back eagerly.

    Args:
        variables: the `tf.Variable`s to copy.
        releasable: the copies may be emptied (`release`) and filled again,
            which needs variables of no fixed shape (not under a strategy
            with several replicas, whose variables keep their shape).

    Example:
    >>> snapshot = Snapshot(watched_variables, releasable=True)
    >>> snapshot.fill()                        # at train begin
    >>> flats = snapshot.flat(values)          # in the step, `values` read from the variables
    >>> assigns = snapshot.save_flat(flats)    # (in a conditional: its one input per dtype)
    >>> snapshot.restore()                     # on the host
    """

    def __init__(self, variables, releasable=True):
        self.variables = list(variables)
        self.releasable = bool(releasable)
        groups = {}
        for index, variable in enumerate(self.variables):
            groups.setdefault(tf.as_dtype(variable.dtype), []).append(index)
        self._groups = list(groups.values())
        self.shadows = []
        """The flat copies, one `tf.Variable` per dtype of the variables."""
        for number, flat in enumerate(self.flat([variable.read_value() for variable in self.variables])):
            shape = tf.TensorShape(None) if self.releasable else flat.shape
            self.shadows.append(tf.Variable(flat, trainable=False, shape=shape, name=f"nan_guard_snapshot_{number}"))

    @staticmethod
    def _flat(values):
        # Traced at every new compile of the step, where each op adds to the trace: vectors go in as
        # they are, and the others share one shape constant.
        flat_shape = tf.constant([-1])
        return tf.concat([value if value.shape.rank == 1 else tf.reshape(value, flat_shape) for value in values], 0)

    def _parts(self, flat, indices):
        """The variables' values of group `indices` out of its flat copy `flat`, each in its variable's shape."""
        variables = [self.variables[i] for i in indices]
        sizes = [v.shape.num_elements() if v.shape.is_fully_defined() else tf.size(v) for v in variables]
        parts = tf.split(flat, sizes) if len(variables) > 1 else [flat]
        return [tf.reshape(part, v.shape if v.shape.is_fully_defined() else tf.shape(v))
                for part, v in zip(parts, variables)]

    def fill(self):
        """Copies the variables' current values (eagerly)."""
        self.save_flat(self.flat([variable.read_value() for variable in self.variables]))

    def release(self):
        """Empties the copies, which then hold no memory until the next `fill`; a no-op when not releasable."""
        if self.releasable:
            for shadow in self.shadows:
                shadow.assign(tf.zeros([0], shadow.dtype))

    def flat(self, values):
        """`values` (one tensor per variable) as the flat vectors `save_flat` takes, one per copy."""
        return [self._flat([values[i] for i in indices]) for indices in self._groups]

    def save_flat(self, flats):
        """The assignments that copy the flat vectors `flats` (from `flat`)."""
        return [shadow.assign(flat, read_value=False) for shadow, flat in zip(self.shadows, flats)]

    def _copied(self):
        """(index of a variable, its value in the copy, in its shape) for every variable."""
        for shadow, indices in zip(self.shadows, self._groups):
            yield from zip(indices, self._parts(shadow.read_value(), indices))

    def restore(self):
        """Puts the copies back into the variables (eagerly)."""
        for index, value in self._copied():
            self.variables[index].assign(value)

    def values(self):
        """The copies as numpy, one array per variable, in order."""
        arrays = [None] * len(self.variables)
        for index, value in self._copied():
            arrays[index] = value.numpy()
        return arrays
