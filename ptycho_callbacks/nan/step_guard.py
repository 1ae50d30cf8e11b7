"""The device-side half of NaNGuard: the finite check that runs inside Keras's train step.

Keras hands callbacks one log per call of its train function, and with
`steps_per_execution > 1` one call runs several optimizer steps; under
`jit_compile=True` the step is an XLA program. A check done only in a batch
hook therefore cannot say WHICH step went bad. `StepGuard` wraps the model's
`train_step`: after each step it checks the step's losses (and the weights)
with `tf.math.is_finite` (which, unlike `tf.debugging.check_numerics`, is
honoured under XLA). While everything is finite it keeps a device-side copy
of the weights (the snapshot); at the first failure it stores the step
(counted by the guard itself) and keeps the failing batch on the device.

The step hands its verdict out with its own results: the guarded step adds
one vector to the logs it returns (the first bad step, `log_scale` and
Keras's loss-tracker totals), and the train function Keras calls takes it
out again before Keras sees the logs (`_ReportingFunction`). When the
verdict says the guard fired, that function notes which variables are
non-finite and puts the snapshot back, on the host, before it returns:
before any callback runs. A batch hook then reads the one vector; it makes
no call to the device of its own and never waits on one. What the step
itself adds is kept small, since it is traced at every new compile and run
at every step: one read of each variable, one finiteness reduction per
dtype, and two conditionals with few inputs.
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
    tensors = [value for value in values if value.shape.rank != 0]
    if scalars:  # Keras's own logs: one check for all
        tensors.append(stacked(scalars, tf.float32))
    return _all_finite(tensors)


def _all_finite(tensors):
    """Whether every element of every tensor in `tensors` is finite, as one boolean tensor.

    The ops are those of the train step, traced at every new compile: one
    tensor takes one reduction, not a stack of one.
    """
    checks = [tf.reduce_all(tf.math.is_finite(tensor)) for tensor in tensors]
    if len(checks) > 1:
        return tf.reduce_all(tf.stack(checks))
    return checks[0] if checks else tf.constant(True)


def fresh_train_function(model):
    """A train function Keras makes anew for `model` (traced at its first call), also set as `model.train_function`."""
    function = model.make_train_function(force=True)
    return function if function is not None else model.train_function  # tf_keras returns it, Keras 3 sets it


def _kind(array):
    """FINITE, NAN, POS_INF or NEG_INF: what the numpy `array` holds (NaN first)."""
    if np.isnan(array).any():
        return NAN
    if np.isposinf(array).any():
        return POS_INF
    return NEG_INF if np.isneginf(array).any() else FINITE


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
        restore_when_fired: when the guard fires, put the snapshot back
            (on the host, as soon as the train function returns, before
            any callback runs), so that no other callback ever sees the
            non-finite weights.
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

    def __init__(self, model, variables, check_weights=True, keep_snapshot=False, restore_when_fired=False,
                 capture_batch=False, log_scale_index=None):
        self._options = dict(check_weights=check_weights, keep_snapshot=keep_snapshot,
                             restore_when_fired=restore_when_fired, capture_batch=capture_batch,
                             log_scale_index=log_scale_index)
        self.model = model
        self.variables = list(variables)
        self.check_weights = bool(check_weights)
        self.restore_when_fired = bool(restore_when_fired and keep_snapshot)
        self.capture_batch = bool(capture_batch)
        self.log_scale_index = log_scale_index
        self._original_train_step = None
        self._keras_function = None  # Keras's own train function, given back at uninstall
        self._guarded_function = None  # the guarded one, kept while Keras's stays the same
        self._reporting_function = None  # the guarded one as Keras calls it: it reports what it raises
        self.on_error = None
        """Called with the exception when a call of the guarded train function raises (e.g. Ctrl-C in a step)."""
        self.verdict = None
        """The verdict of the latest call of the guarded train function (numpy), until `take_verdict`."""
        self.tracker_names = None
        """Names of Keras's trackers whose state the verdicts carry, in order (known once the step is traced)."""
        self.captures_batch = False
        self._batch_structure = None
        self._captured = None
        self._kinds = None  # what each watched variable held when the guard fired, noted on the host
        self._fired_state = None  # the variable keeping Keras's tracker state of the failing step
        self._fired_values = None  # its value, read when the guard fired
        strategy = getattr(model, "distribute_strategy", None)
        with self._scope():
            self.first_bad = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="nan_guard_first_bad")
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
        self.batch_captured.assign(False)
        self.verdict = None
        self._kinds = self._fired_values = None
        if self.snapshot is not None:
            self.snapshot.fill()

    def release(self):
        """Empties the snapshot after a fit: it costs no memory until `reset` fills it for the next one."""
        if self.snapshot is not None:
            self.snapshot.release()

    # ------------------------------------------------------------ inside a tf.function

    def check(self, losses_ok, step, batch=None, state=None):
        """The check (inside a tf.function): saves the snapshot or fires (or neither); returns whether it fired.

        One read of each variable: with a snapshot, the flat copy made of
        those reads is checked whole (one reduction per dtype) and is what
        the save assigns; without one, each read is checked. The firing
        itself only stores the step (and the batch): which variables were
        non-finite, and putting the snapshot back, is done on the host
        (`fired`), outside the traced step.
        """
        weighed = self.check_weights or self.snapshot is not None
        values = [tf.convert_to_tensor(v) for v in self.variables] if weighed else []
        if self.snapshot is not None:
            flats = self.snapshot.flat(values)
            checked = flats
        else:
            checked = values
        weights_ok = _all_finite(checked)
        armed = self.first_bad < 0
        all_ok = tf.logical_and(losses_ok, weights_ok)
        if self.snapshot is not None:
            def save_snapshot():
                assigns = self.snapshot.save_flat(flats)
                assigns.append(self.snapshot_step.assign(tf.cast(step, tf.int64), read_value=False))
                with tf.control_dependencies(assigns):
                    return tf.constant(True)
            saved = tf.cond(tf.logical_and(armed, all_ok), save_snapshot, _constant(False))
        else:
            saved = tf.constant(False)

        keeper = self._state_keeper(state.shape[0]) if state is not None else None

        def fire_now():
            assigns = [self.first_bad.assign(tf.cast(step, tf.int64), read_value=False)]
            if keeper is not None:
                assigns.append(keeper.assign(state, read_value=False))
            if batch is not None:
                assigns += [c.assign(t, read_value=False) for c, t in zip(self._captured, batch)]
                assigns.append(self.batch_captured.assign(True, read_value=False))
            with tf.control_dependencies(assigns):
                return tf.constant(True)

        ok = all_ok if self.check_weights else losses_ok
        with tf.control_dependencies([saved]):
            return tf.cond(tf.logical_and(armed, tf.logical_not(ok)), fire_now, _constant(False))

    def report(self, after, state=None):
        """The verdict (inside a tf.function, after `after`): [first bad step, log_scale, tracker state...].

        float64 holds any step count exactly. `state` is the tracker state
        (`_tracker_state`) if it was read already.
        """
        if state is None:
            state = self._tracker_state()
        with tf.control_dependencies([after]):
            scale = self.variables[self.log_scale_index] if self.log_scale_index is not None else tf.constant(0.0)
            head = stacked([self.first_bad, scale], tf.float64)
            return tf.concat([head, state], 0)

    def fired(self):
        """On the host, once the guard has fired: notes what each variable holds, then puts the snapshot back.

        Called as soon as the train function whose step fired returns
        (before any callback runs), or when the batch hook that checked the
        step itself asks what each variable held (`variable_kinds`); only
        the first call of a firing does anything. Returns Keras's tracker
        state after the failing step when the step kept it, else None.
        """
        if self._kinds is None:
            self._kinds = [_kind(variable.numpy()) for variable in self.variables]
            if self._fired_state is not None:
                self._fired_values = self._fired_state.numpy()
            if self.restore_when_fired:
                self.restore()
        return self._fired_values

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
        built = BatchValues(model).scalars()
        if built:  # made now, not while tracing: a variable made while tracing makes tf.function trace twice
            self._state_keeper(len(built))

        def guarded_train_step(data):
            logs = original(data)
            state = self._tracker_state()
            checked = self.after_step(data, logs, state)
            if not isinstance(logs, dict):  # nowhere to put the verdict: NaNGuard's batch hook reads it
                return logs
            return {**logs, VERDICT: self.report(checked, state)}

        model.train_step = guarded_train_step
        self._original_train_step = original
        keras_function = getattr(model, "train_function", None)
        if self._guarded_function is None or keras_function is None or keras_function is not self._keras_function:
            self._keras_function = keras_function
            self._guarded_function = fresh_train_function(model)
            self._reporting_function = _ReportingFunction(self._guarded_function, self)
        model.train_function = self._reporting_function
        return True

    def after_step(self, data, logs, state=None):
        """What the guarded train step adds to Keras's (inside its tf.function): the check, given the batch.

        `state` (Keras's tracker state after this step) is kept when the
        guard fires: with several steps per call, the steps after the
        failing one change it before the call returns.
        """
        step = self.steps.assign_add(1)
        return self.check(_losses_finite(logs), step, batch=self._batch_to_capture(data), state=state)

    def _tracker_state(self):
        """Keras's tracker state now (inside the step, after Keras's): float64, in `tracker_names` order.

        The tracker list is taken here, after Keras's step, which builds
        tf_keras's trackers in its first call.
        """
        trackers = BatchValues(self.model)
        self.tracker_names = trackers.names
        return trackers.state(tf.float64)

    def _state_keeper(self, size):
        """The variable that keeps the tracker state of the failing step, made before the first trace if it can be.

        Keras 3 has built its trackers by then; tf_keras builds them in the
        first step, whose trace then makes this one too.
        """
        if self._fired_state is None or self._fired_state.shape[0] != size:
            with tf.init_scope(), self._scope():
                self._fired_state = tf.Variable(tf.zeros([size], tf.float64), trainable=False,
                                                name="nan_guard_fired_state")
        return self._fired_state

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
        return verdict

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
        """[FINITE | NAN | POS_INF | NEG_INF] per watched variable, as they were when the guard fired."""
        self.fired()
        return list(self._kinds)

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
            verdict = logs.pop(VERDICT).numpy()
            if verdict[0] >= 0:
                state = guard.fired()
                if state is not None and len(state) == len(verdict) - HEAD:
                    # The failing step's, not those of the steps after it in this call.
                    verdict = np.concatenate([verdict[:HEAD], state])
            guard.verdict = verdict
        return logs

    def __getattr__(self, name):
        return getattr(self.function, name)
