"""The device-side half of NaNGuard: the finite check that runs inside Keras's train step.

Keras hands callbacks one log per call of its train function, and with
`steps_per_execution > 1` one call runs several optimizer steps; under
`jit_compile=True` the step is an XLA program. A check done only in a batch
hook therefore cannot say WHICH step went bad. `StepGuard` wraps the model's
`train_step`: after each step it checks the step's losses (and the weights)
with `tf.math.is_finite` (which, unlike `tf.debugging.check_numerics`, is
honoured under XLA). While everything is finite it keeps a device-side copy
of the weights (the snapshot); at the first failure it stores the step
(counted by the guard itself), notes which variables were non-finite, puts
the snapshot back when asked and keeps the failing batch on the device.

The step hands its verdict out with its own results: the guarded step adds
one vector to the logs it returns (the first bad step, `log_scale` and
Keras's loss-tracker totals), and the train function Keras calls takes it
out again before Keras sees the logs (`_ReportingFunction`). A batch hook
then reads that one vector; it makes no call to the device of its own and
never waits on one.
"""

import contextlib

import numpy as np
import tensorflow as tf

from ..callbacks.batch_values import BatchValues, stacked
from ..callbacks.loss_discovery import is_loss_name
from .snapshot import Snapshot

FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
"""Codes of `StepGuard.variable_kinds()`: what a variable held when the guard fired."""

VERDICT = "_ptycho_callbacks_step_verdict"
"""The key of the verdict in the guarded step's logs; taken out before Keras sees them."""

HEAD = 2
"""Entries of a verdict before Keras's tracker state: the first bad step and `log_scale`."""


def _uses_xla(model):
    jit = getattr(model, "jit_compile", None)
    if jit is None:
        jit = getattr(model, "_jit_compile", None)
    return jit is True


def _losses_finite(logs):
    """True when every loss entry (every floating entry if none is named like a loss) of `logs` is finite."""
    if isinstance(logs, dict):
        named = [value for name, value in logs.items() if is_loss_name(name)]
        values = named or list(logs.values())
    else:
        values = tf.nest.flatten(logs)
    values = [value for value in values if tf.is_tensor(value) and value.dtype.is_floating]
    scalars = [value for value in values if value.shape.rank == 0]
    checks = [tf.reduce_all(tf.math.is_finite(value)) for value in values if value.shape.rank != 0]
    if scalars:  # Keras's own logs: one check for all
        checks.append(tf.reduce_all(tf.math.is_finite(stacked(scalars, tf.float32))))
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def fresh_train_function(model):
    """A train function Keras makes anew for `model` (traced at its first call), also set as `model.train_function`."""
    function = model.make_train_function(force=True)
    return function if function is not None else model.train_function  # tf_keras returns it, Keras 3 sets it


def _sums(values):
    """The sum of each tensor of `values` as one float64 vector (16-bit floats summed in float32)."""
    wide = (tf.float32, tf.float64)
    return stacked([tf.reduce_sum(x if x.dtype in wide else tf.cast(x, tf.float32)) for x in values], tf.float64)


def _constant(value):
    return lambda: tf.constant(value)


_ON_MODEL = "_ptycho_callbacks_step_guard"  # where `StepGuard.for_model` keeps a model's guard


class StepGuard:
    """Device-side state of a NaN guard for one model.

    Args:
        model: the model whose steps are checked.
        variables: the `tf.Variable`s watched (weights and log_scale).
        check_weights: a non-finite watched variable fires the guard
            (otherwise only the losses do).
        keep_snapshot: keep a device-side copy of the variables after the
            last step where they and the losses were finite.
        restore_in_step: when the guard fires inside a step, put the
            snapshot back before the step returns, so that no other callback
            ever sees the non-finite weights.
        capture_batch: keep the failing step's batch on the device.
        log_scale_index: position of `log_scale` among `variables` (None:
            none), whose value each verdict carries.

    Example:
    >>> guard = StepGuard(model, [tf_variable(v) for v in model.weights], True, True, True, False)
    >>> guard.install()           # at train begin
    >>> guard.take_verdict()      # in a batch hook: [first bad step (-1: none), log_scale, tracker state...]
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
                 capture_batch=False, log_scale_index=None):
        self._options = dict(check_weights=check_weights, keep_snapshot=keep_snapshot,
                             restore_in_step=restore_in_step, capture_batch=capture_batch,
                             log_scale_index=log_scale_index)
        self.model = model
        self.variables = list(variables)
        self.check_weights = bool(check_weights)
        self.restore_in_step = bool(restore_in_step and keep_snapshot)
        self.capture_batch = bool(capture_batch)
        self.log_scale_index = log_scale_index
        self._original_train_step = None
        self._keras_function = None  # Keras's own train function, given back at uninstall
        self._guarded_function = None  # the guarded one, kept while Keras's stays the same
        self._reporting_function = None  # the guarded one as Keras calls it: it reports what it raises
        self.on_error = None
        """Called with the exception when a call of the guarded train function raises (e.g. Ctrl-C in a step)."""
        self.verdict = None
        """The verdict of the latest call of the guarded train function (a tensor), until `take_verdict`."""
        self.tracker_names = None
        """Names of Keras's trackers whose state the verdicts carry, in order (known once the step is traced)."""
        self.captures_batch = False
        self._batch_structure = None
        self._captured = None
        self._fire_function = None
        strategy = getattr(model, "distribute_strategy", None)
        count = len(self.variables)
        with self._scope():
            self.first_bad = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="nan_guard_first_bad")
            self.losses_failed = tf.Variable(False, trainable=False, name="nan_guard_losses_failed")
            # Each watched variable's sum when the guard fired: NaN, +Inf or -Inf says what it held.
            self.sums = tf.Variable(tf.zeros([count], tf.float64), trainable=False, name="nan_guard_sums")
            self.batch_captured = tf.Variable(False, trainable=False, name="nan_guard_batch_captured")
            self.snapshot_step = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                             name="nan_guard_snapshot_step")
            # The guard counts steps itself: optimizer.iterations stands still on the steps a loss-scale
            # optimizer skips (mixed precision) and between the updates of gradient accumulation.
            self.steps = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="nan_guard_steps")
            # One replica: a snapshot of no fixed shape, emptied after fit (`release`) and filled again at
            # `reset`, so it holds memory only while a fit runs and the traced function stays valid.
            releasable = strategy is None or strategy.num_replicas_in_sync == 1
            self.snapshot = Snapshot(self.variables, releasable) if keep_snapshot else None

    @property
    def shadows(self):
        """The snapshot's flat copies (`tf.Variable`s, one per dtype), None without a snapshot."""
        return None if self.snapshot is None else self.snapshot.shadows

    def _scope(self):
        """The scope the guard's variables are made in: the model's distribution strategy's, if any."""
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

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
        self.verdict = None
        if self.snapshot is not None:
            self.snapshot.fill()

    def release(self):
        """Empties the snapshot after a fit: it costs no memory until `reset` fills it for the next one."""
        if self.snapshot is not None:
            self.snapshot.release()

    # ------------------------------------------------------------ inside a tf.function

    def check(self, losses_ok, step, batch=None):
        """The check (inside a tf.function): saves the snapshot or fires (or neither); returns whether it fired.

        All on one read of each variable, whose sum decides: a sum is
        finite exactly when every element is (short of a float32 overflow
        past 3.4e38), and when the guard fires it also says what the
        variable held (NaN, +Inf or -Inf). The snapshot copies the same
        reads. Two conditionals, not one `switch_case`: every branch of a
        case takes the inputs of all of them, which costs tracing time.
        """
        weighed = self.check_weights or self.snapshot is not None
        values = [tf.convert_to_tensor(v) for v in self.variables] if weighed else []
        sums = _sums(values) if weighed else None
        weights_ok = tf.reduce_all(tf.math.is_finite(sums)) if weighed else tf.constant(True)
        armed = self.first_bad < 0
        all_ok = tf.logical_and(losses_ok, weights_ok)
        if self.snapshot is not None:
            flats = self.snapshot.flat(values)

            def save_snapshot():
                assigns = self.snapshot.save_flat(flats)
                assigns.append(self.snapshot_step.assign(tf.cast(step, tf.int64), read_value=False))
                with tf.control_dependencies(assigns):
                    return tf.constant(True)
            saved = tf.cond(tf.logical_and(armed, all_ok), save_snapshot, _constant(False))
        else:
            saved = tf.constant(False)

        def fire_now():
            with tf.control_dependencies(self._fire(losses_ok, step, sums, batch)):
                return tf.constant(True)

        ok = all_ok if self.check_weights else losses_ok
        with tf.control_dependencies([saved]):
            return tf.cond(tf.logical_and(armed, tf.logical_not(ok)), fire_now, _constant(False))

    def _fire(self, losses_ok, step, sums, batch=None):
        """The assignments of a firing: first bad step, what each variable held, restore, captured batch."""
        assigns = [self.first_bad.assign(tf.cast(step, tf.int64), read_value=False),
                   self.losses_failed.assign(tf.logical_not(losses_ok), read_value=False)]
        if sums is not None:  # None: the weights are not watched, and read as finite
            assigns.append(self.sums.assign(sums, read_value=False))
        if self.restore_in_step:
            assigns += self.snapshot.restore()
        if batch is not None:
            assigns += [c.assign(t, read_value=False) for c, t in zip(self._captured, batch)]
            assigns.append(self.batch_captured.assign(True, read_value=False))
        return assigns

    def report(self, after):
        """The verdict (inside a tf.function, after `after`): [first bad step, log_scale, tracker state...].

        float64 holds any step count exactly. The tracker list is taken
        here, after Keras's step, which builds tf_keras's trackers in its
        first call.
        """
        trackers = BatchValues(self.model)
        self.tracker_names = trackers.names
        with tf.control_dependencies([after]):
            scale = self.variables[self.log_scale_index] if self.log_scale_index is not None else tf.constant(0.0)
            first_bad = tf.cast(tf.reshape(self.first_bad, [1]), tf.float64)
            return tf.concat([first_bad, stacked([scale, *trackers.scalars()], tf.float64)], 0)

    def fire_now(self, losses_ok, step):
        """Fires the guard at step `step` from the host (a loss the step's own check could not see)."""
        if self._fire_function is None:
            def fire(losses_ok, step):
                sums = _sums([tf.convert_to_tensor(v) for v in self.variables])
                with tf.control_dependencies(self._fire(losses_ok, step, sums)):
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
            logs = original(data)
            checked = self.after_step(data, logs)
            if not isinstance(logs, dict):  # nowhere to put the verdict: NaNGuard's batch hook reads it
                return logs
            return {**logs, VERDICT: self.report(checked)}

        model.train_step = guarded_train_step
        self._original_train_step = original
        keras_function = getattr(model, "train_function", None)
        if self._guarded_function is None or keras_function is None or keras_function is not self._keras_function:
            self._keras_function = keras_function
            self._guarded_function = fresh_train_function(model)
            self._reporting_function = _ReportingFunction(self._guarded_function, self)
        model.train_function = self._reporting_function
        return True

    def after_step(self, data, logs):
        """What the guarded train step adds to Keras's (inside its tf.function): the check, given the batch."""
        step = self.steps.assign_add(1)
        return self.check(_losses_finite(logs), step, batch=self._batch_to_capture(data))

    def uninstall(self):
        """Gives the model back its own `train_step` and Keras's own train function."""
        if self._original_train_step is None:
            return
        if "train_step" in vars(self.model):
            del self.model.train_step
        self.model.train_function = self._keras_function  # None: Keras makes one at the next fit
        self._original_train_step = None

    def take_verdict(self):
        """The latest step's verdict as numpy (None when the step handed none out), and forgets it."""
        verdict, self.verdict = self.verdict, None
        return None if verdict is None else verdict.numpy()

    def prepare_capture(self, iterator):
        """Makes the variables that keep a failing batch, from the structure `iterator` yields.

        Made before the step is traced: a variable made while tracing makes
        tf.function trace the whole step twice.
        """
        self._captured = []
        spec = getattr(iterator, "element_spec", None)
        flat = tf.nest.flatten(spec) if spec is not None else []
        if not flat or not all(isinstance(s, tf.TensorSpec) for s in flat):
            return
        self._batch_structure = spec
        with tf.init_scope(), self._scope():
            self._captured = [tf.Variable(tf.zeros([0] * s.shape.rank if s.shape.rank is not None else [0], s.dtype),
                                          shape=tf.TensorShape(None), validate_shape=False, trainable=False,
                                          name=f"nan_guard_batch_{i}") for i, s in enumerate(flat)]

    def _batch_to_capture(self, data):
        """The step's batch, flat, when it can be kept (the variables made for it fit its structure); else None."""
        if not self.captures_batch or not self._captured:
            return None
        flat = tf.nest.flatten(data)
        if len(flat) != len(self._captured) or any(
                not tf.is_tensor(t) or t.dtype != c.dtype for t, c in zip(flat, self._captured)):
            return None
        self._batch_structure = tf.nest.map_structure(lambda _: None, data)
        return [tf.convert_to_tensor(t) for t in flat]

    # ------------------------------------------------------------ on the host

    def variable_kinds(self):
        """[FINITE | NAN | POS_INF | NEG_INF] per watched variable, as they were when the guard fired.

        A variable that held both +Inf and -Inf (and no NaN) reads NAN: its sum is NaN.
        """
        return [FINITE if np.isfinite(total) else NAN if np.isnan(total) else POS_INF if total > 0 else NEG_INF
                for total in self.sums.numpy()]

    def captured_batch(self):
        """The failing step's batch as numpy, structured as Keras fed it to `train_step`; None if not captured."""
        if not self._captured or not bool(self.batch_captured.numpy()):
            return None
        arrays = [c.numpy() for c in self._captured]
        return tf.nest.pack_sequence_as(self._batch_structure, arrays)

    def snapshot_values(self):
        """The snapshot's values as numpy (the variables after the last finite step); None without one."""
        return None if self.snapshot is None else self.snapshot.values()

    def snapshot_step_value(self):
        """The step after which the snapshot was taken."""
        return int(self.snapshot_step.numpy())

    def restore(self):
        """Puts the snapshot back into the variables."""
        if self.snapshot is not None:
            self.snapshot.restore()


class _ReportingFunction:
    """The guarded train function as Keras calls it: it takes the verdict out of the logs and reports errors.

    The verdict goes to the guard (`StepGuard.verdict`), and Keras gets the
    logs of its own step. Keras calls no callback when `fit` is left by an
    exception; a suite built inside the call
    (`model.fit(..., callbacks=default_callbacks(...))`) is not behind
    `finish_on_exception`. What raises inside a step (Ctrl-C during the
    step, a broken input pipeline) still reaches `on_error`.
    """

    def __init__(self, function, guard):
        self.function, self.guard = function, guard

    def __call__(self, *args, **kwargs):
        guard = self.guard
        if guard.captures_batch and guard._captured is None:
            guard.prepare_capture(args[0] if args else None)
        try:
            logs = self.function(*args, **kwargs)
        except BaseException as error:
            if guard.on_error is not None:
                guard.on_error(error)
            raise
        if isinstance(logs, dict) and VERDICT in logs:
            logs = dict(logs)
            guard.verdict = logs.pop(VERDICT)
        return logs

    def __getattr__(self, name):
        return getattr(self.function, name)
