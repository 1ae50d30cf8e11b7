"""The device-side half of NaNGuard: the finite check that runs inside Keras's train step.

Keras hands callbacks one log per call of its train function, and with
`steps_per_execution > 1` one call runs several optimizer steps; under
`jit_compile=True` the step is an XLA program. A check done only in a batch
hook therefore cannot say WHICH step went bad. `StepGuard` wraps the model's
`train_step`: after each step it checks the step's losses (and the weights)
with `tf.math.is_finite` (which, unlike `tf.debugging.check_numerics`, is
honoured under XLA), and at the first failure it stores the step (counted by
the guard itself) in a variable, freezes the snapshot of the weights the
failing step started from (putting them back at once when asked), notes
which variables were non-finite, and keeps the failing batch on the device. Until then a step
costs a few reductions and, with a snapshot, one device-side copy of the
weights, taken at the start of the step where it overlaps the forward pass
(taken at the end, after the optimizer's update, it would hold up every
step); nothing is copied to the host.
"""

import contextlib

import tensorflow as tf

from ..callbacks.loss_discovery import is_loss_name

FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
"""Codes of `StepGuard.variable_kinds()`: what a variable held when the guard fired."""


def _uses_xla(model):
    jit = getattr(model, "jit_compile", None)
    if jit is None:
        jit = getattr(model, "_jit_compile", None)
    return jit is True


def _kind(variable):
    values = tf.convert_to_tensor(variable)
    return tf.where(tf.reduce_any(tf.math.is_nan(values)), NAN,
                    tf.where(tf.reduce_any(tf.equal(values, float("inf"))), POS_INF,
                             tf.where(tf.reduce_any(tf.equal(values, float("-inf"))), NEG_INF, FINITE)))


def _all_finite(variables):
    if not variables:
        return tf.constant(True)
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


def _losses_finite(logs):
    """True when every loss entry (every floating entry if none is named like a loss) of `logs` is finite."""
    if isinstance(logs, dict):
        named = [value for name, value in logs.items() if is_loss_name(name)]
        values = named or list(logs.values())
    else:
        values = tf.nest.flatten(logs)
    checks = [tf.reduce_all(tf.math.is_finite(tf.cast(value, tf.float32))) for value in values
              if tf.is_tensor(value) and value.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def fresh_train_function(model):
    """A train function Keras makes anew for `model` (traced at its first call), also set as `model.train_function`."""
    function = model.make_train_function(force=True)
    return function if function is not None else model.train_function  # tf_keras returns it, Keras 3 sets it


_ON_MODEL = "_ptycho_callbacks_step_guard"  # where `StepGuard.for_model` keeps a model's guard


class StepGuard:
    """Device-side state of a NaN guard for one model.

    Args:
        model: the model whose steps are checked.
        variables: the `tf.Variable`s watched (weights and log_scale).
        check_weights: a non-finite watched variable fires the guard
            (otherwise only the losses do).
        keep_snapshot: keep a device-side copy of the variables each step
            starts from, while they are finite and the guard is armed.
        restore_in_step: when the guard fires inside a step, put the
            snapshot back before the step returns, so that no other callback
            ever sees the non-finite weights.
        capture_batch: keep the failing step's batch on the device.

    Example:
    >>> guard = StepGuard(model, [tf_variable(v) for v in model.weights], True, True, True, False)
    >>> guard.install()           # at train begin
    >>> guard.first_bad.numpy()   # -1 until a step goes non-finite
    """

    @classmethod
    def for_model(cls, model, variables, **options):
        """`model`'s guard of these variables with these options, the one of its previous fit if it fits.

        Kept per model, so that a new fit (with a new `NaNGuard`) finds the
        train function this guard compiled then and need not trace it again.
        """
        guard = vars(model).get(_ON_MODEL)
        if guard is not None and guard.installed:  # a fit that ended without uninstalling: never wrap a wrapper
            guard.uninstall()
        if (guard is None or guard._options != options
                or [id(v) for v in guard.variables] != [id(v) for v in variables]):
            guard = cls(model, variables, **options)
            # On the model itself, not in a weak map: the guard holds the model through its functions.
            # object.__setattr__ keeps it out of Keras's attribute tracking (and of saved models).
            object.__setattr__(model, _ON_MODEL, guard)
        return guard

    def __init__(self, model, variables, check_weights=True, keep_snapshot=False, restore_in_step=False,
                 capture_batch=False):
        self._options = dict(check_weights=check_weights, keep_snapshot=keep_snapshot,
                             restore_in_step=restore_in_step, capture_batch=capture_batch)
        self.model = model
        self.variables = list(variables)
        self.check_weights = bool(check_weights)
        self.restore_in_step = bool(restore_in_step and keep_snapshot)
        self.capture_batch = bool(capture_batch)
        self._original_train_step = None
        self._keras_function = None  # Keras's own train function, given back at uninstall
        self._guarded_function = None  # the guarded one, kept while Keras's stays the same
        self._reporting_function = None  # the guarded one as Keras calls it: it reports what it raises
        self.on_error = None
        """Called with the exception when a call of the guarded train function raises (e.g. Ctrl-C in a step)."""
        self.captures_batch = False
        self._batch_structure = None
        self._captured = None
        self._fire_function = None
        strategy = getattr(model, "distribute_strategy", None)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            self.first_bad = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="nan_guard_first_bad")
            self.losses_failed = tf.Variable(False, trainable=False, name="nan_guard_losses_failed")
            self.kinds = tf.Variable(tf.zeros([len(self.variables)], tf.int32), trainable=False,
                                     name="nan_guard_kinds")
            self.batch_captured = tf.Variable(False, trainable=False, name="nan_guard_batch_captured")
            self.snapshot_step = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                             name="nan_guard_snapshot_step")
            # The guard counts steps itself: optimizer.iterations stands still on the steps a loss-scale
            # optimizer skips (mixed precision) and between the updates of gradient accumulation.
            self.steps = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="nan_guard_steps")
            # One replica: shadows of no fixed shape, emptied after fit (`release`) and filled again at `reset`,
            # so the snapshot holds memory only while a fit runs and the traced function stays valid.
            self._releasable = strategy is None or strategy.num_replicas_in_sync == 1
            shape = (lambda v: tf.TensorShape(None)) if self._releasable else (lambda v: v.shape)
            self.shadows = [tf.Variable(v.read_value(), trainable=False, shape=shape(v), name=f"nan_guard_shadow_{i}")
                            for i, v in enumerate(self.variables)] if keep_snapshot else None

    @property
    def installed(self):
        return self._original_train_step is not None

    def reset(self, step=0):
        """Arms the guard again at step `step` (the fit's first step is `step + 1`) and snapshots the variables."""
        self.first_bad.assign(-1)
        self.snapshot_step.assign(step)
        self.steps.assign(step)
        self.losses_failed.assign(False)
        self.batch_captured.assign(False)
        for shadow, variable in zip(self.shadows or [], self.variables):
            shadow.assign(variable)

    def _verdict(self, losses_ok, snapshot):
        """(fire, all_ok) inside a tf.function: fire is True when the guard, still armed, must fire now.

        all_ok (losses and weights finite) serves only a `snapshot` to be taken; without one, and without
        check_weights, the weights are not read.
        """
        watch_all = self.check_weights or (snapshot and self.shadows is not None)
        weights_ok = _all_finite(self.variables) if watch_all else tf.constant(True)
        fire_ok = tf.logical_and(losses_ok, weights_ok) if self.check_weights else losses_ok
        return tf.logical_and(self.first_bad < 0, tf.logical_not(fire_ok)), tf.logical_and(losses_ok, weights_ok)

    def _fire(self, losses_ok, step, batch=None):
        """The assignments of a firing: first bad step, variable kinds, restore, captured batch."""
        assigns = [self.first_bad.assign(tf.cast(step, tf.int64)),
                   self.losses_failed.assign(tf.logical_not(losses_ok))]
        if self.variables:
            assigns.append(self.kinds.assign(tf.stack([_kind(v) for v in self.variables])))
        if self.restore_in_step:
            assigns += [v.assign(s) for s, v in zip(self.shadows, self.variables)]
        if batch is not None:
            assigns += [c.assign(t, read_value=False) for c, t in zip(self._captured, batch)]
            assigns.append(self.batch_captured.assign(True))
        return assigns

    def check(self, losses_ok, step, snapshot=True, batch=None):
        """The check itself (inside a tf.function): returns True when the guard fires at this `step`."""
        fire, all_ok = self._verdict(losses_ok, snapshot)
        updates = []
        if self.shadows is not None and snapshot:
            updates.append(self._save_snapshot(all_ok, step))

        def on_fire():
            with tf.control_dependencies(self._fire(losses_ok, step, batch)):
                return tf.constant(True)

        with tf.control_dependencies(updates):
            return tf.cond(fire, on_fire, lambda: tf.constant(False))

    def release(self):
        """Empties the snapshot after a fit: it costs no memory until `reset` fills it for the next one."""
        if self.shadows is not None and self._releasable:
            for shadow, variable in zip(self.shadows, self.variables):
                shadow.assign(tf.zeros([0] * len(variable.shape), variable.dtype))

    def _save_snapshot(self, all_ok, step):
        """Inside a tf.function: copies the variables into the snapshot when the guard is armed and `all_ok`."""
        def save():
            assigns = [s.assign(v) for s, v in zip(self.shadows, self.variables)]
            assigns.append(self.snapshot_step.assign(tf.cast(step, tf.int64)))
            with tf.control_dependencies(assigns):
                return tf.constant(True)
        return tf.cond(tf.logical_and(self.first_bad < 0, all_ok), save, lambda: tf.constant(False))

    def must_fire(self, losses_ok):
        """Inside a tf.function: True when the guard must fire now; `fire_now` then does it.

        The light half of `check` for a batch hook that runs beside the
        in-step check: the firing itself is rare and runs as its own call.
        """
        return self._verdict(losses_ok, snapshot=False)[0]

    def fire_now(self, losses_ok, step):
        """Fires the guard at step `step` (after `must_fire` said so)."""
        if self._fire_function is None:
            def fire(losses_ok, step):
                with tf.control_dependencies(self._fire(losses_ok, step)):
                    return tf.identity(self.first_bad)
            self._fire_function = tf.function(fire, autograph=False)
        return int(self._fire_function(tf.constant(bool(losses_ok)), tf.constant(int(step), tf.int64)))

    # ------------------------------------------------------------ in the step

    def install(self):
        """Wraps the model's `train_step` with the check and gives Keras the guarded train function.

        The guarded function compiled at an earlier install is used again as
        long as Keras's own train function is the one it replaced then (a
        new `compile` makes a new one). Not done under a strategy with
        several replicas (each replica would decide alone); the batch hook's
        check is the guard there.
        """
        model = self.model
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            return False
        self.uninstall()
        original = model.train_step
        self.captures_batch = self.capture_batch and not _uses_xla(model)  # XLA cannot resize a variable

        def guarded_train_step(data):
            self.before_step()
            logs = original(data)
            self.after_step(data, logs)
            return logs

        model.train_step = guarded_train_step
        self._original_train_step = original
        keras_function = getattr(model, "train_function", None)
        if self._guarded_function is None or keras_function is None or keras_function is not self._keras_function:
            self._keras_function = keras_function
            self._guarded_function = fresh_train_function(model)
            self._reporting_function = _ReportingFunction(self._guarded_function, self)
        model.train_function = self._reporting_function
        return True

    def before_step(self):
        """What the guarded train step does before Keras's (inside its tf.function): the snapshot it starts from.

        Taken while the forward pass reads the same weights, it does not hold up the end of the step.
        """
        if self.shadows is not None:
            self._save_snapshot(_all_finite(self.variables), self.steps)

    def after_step(self, data, logs):
        """What the guarded train step adds to Keras's (inside its tf.function): the check, given the batch."""
        flat = None
        if self.captures_batch:
            flat = [tf.convert_to_tensor(t) for t in tf.nest.flatten(data)]
            self._prepare_capture(data, flat)
        step = self.steps.assign_add(1)
        return self.check(_losses_finite(logs), step, snapshot=False, batch=flat)

    def uninstall(self):
        """Gives the model back its own `train_step` and Keras's own train function."""
        if self._original_train_step is None:
            return
        if "train_step" in vars(self.model):
            del self.model.train_step
        self.model.train_function = self._keras_function  # None: Keras makes one at the next fit
        self._original_train_step = None

    def _prepare_capture(self, data, flat):
        if self._captured is not None:
            return
        self._batch_structure = tf.nest.map_structure(lambda _: None, data)
        with tf.init_scope():
            self._captured = [tf.Variable(tf.zeros([0] * len(t.shape), t.dtype), shape=tf.TensorShape(None),
                                          validate_shape=False, trainable=False, name=f"nan_guard_batch_{i}")
                              for i, t in enumerate(flat)]

    # ------------------------------------------------------------ on the host

    def variable_kinds(self):
        """[FINITE | NAN | POS_INF | NEG_INF] per watched variable, as they were when the guard fired."""
        return [int(k) for k in self.kinds.numpy()]

    def captured_batch(self):
        """The failing step's batch as numpy, structured as Keras fed it to `train_step`; None if not captured."""
        if self._captured is None or not bool(self.batch_captured.numpy()):
            return None
        arrays = [c.numpy() for c in self._captured]
        return tf.nest.pack_sequence_as(self._batch_structure, arrays)

    def snapshot(self):
        """The snapshot's values as numpy (the variables before the failing step); None without one."""
        return None if self.shadows is None else [s.numpy() for s in self.shadows]

    def snapshot_step_value(self):
        """The step after which the snapshot was taken."""
        return int(self.snapshot_step.numpy())

    def restore(self):
        """Puts the snapshot back into the variables."""
        for shadow, variable in zip(self.shadows or [], self.variables):
            variable.assign(shadow)


class _ReportingFunction:
    """The guarded train function as Keras calls it: an exception from a step is told to the guard first.

    Keras calls no callback when `fit` is left by an exception; a suite
    built inside the call (`model.fit(..., callbacks=default_callbacks(...))`)
    is not behind `finish_on_exception`. What raises inside a step (Ctrl-C
    during the step, a broken input pipeline) still reaches `on_error`.
    """

    def __init__(self, function, guard):
        self.function, self.guard = function, guard

    def __call__(self, *args, **kwargs):
        try:
            return self.function(*args, **kwargs)
        except BaseException as error:
            if self.guard.on_error is not None:
                self.guard.on_error(error)
            raise

    def __getattr__(self, name):
        return getattr(self.function, name)

