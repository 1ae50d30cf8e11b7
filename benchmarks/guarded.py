"""What the benchmarks take from the NaN guard's device-side half, in one place: its API is still moving.

`NaNGuard` arms a `StepGuard` inside Keras's train step at every fit. The
benchmarks need that guarded train function outside a fit (to compare it
with Keras's own, in place and at its first trace), and the size of the
weights' snapshot it keeps. Everything that touches `StepGuard` is here, so
that a change of its API is adapted in one file.
"""

import contextlib

import numpy as np
import tensorflow as tf

from ptycho_callbacks import NaNGuard
from ptycho_callbacks.callbacks.scale_discovery import find_log_scale
from ptycho_callbacks.callbacks.variables import model_variables, tf_variable
from ptycho_callbacks.nan.step_guard import StepGuard, fresh_train_function

__all__ = ["fresh_train_function", "nan_guard", "guarded_train_function", "call_step", "traced_function",
           "graph_ops", "step_guard_of", "snapshot_bytes", "trainable_bytes"]


def nan_guard(callbacks):
    """The `NaNGuard` among `callbacks`."""
    return next(callback for callback in callbacks if isinstance(callback, NaNGuard))


def _computed_with(model):
    """The `tf.Variable`s `model` computes with, and its `log_scale` among them (None without one).

    `log_scale` is there even where Keras does not track it (Keras 3).
    """
    log_scale = find_log_scale(model).variable
    variables = [tf_variable(v) for _, v in model_variables(model, log_scale)]
    return variables, None if log_scale is None else tf_variable(log_scale)


@contextlib.contextmanager
def guarded_train_function(model, options, iterator=None):
    """Inside: `model.train_function` is the one a `NaNGuard` with these `step_guard_options()` installs.

    The `StepGuard` watches what `NaNGuard` makes it watch, and is new, as
    at a model's first guarded fit: the function is made anew and traced at
    its first call, which must come inside (the trace reads the guarded
    `train_step`). Outside, the model has Keras's own step back; the
    function keeps the guarded one. Given the `iterator` the function will
    be called on, the variables that keep a failing batch are made now, as
    the first call makes them before its trace: a trace taken before that
    call (`get_concrete_function`) then keeps the batch as a fit's does.
    """
    variables, log_scale = _computed_with(model)
    watched = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    index = next((i for i, v in enumerate(watched) if v is log_scale), None)
    guard = StepGuard(model, watched, log_scale_index=index, **options)
    guard.reset()
    guard.install()
    if iterator is not None and guard.captures_batch:
        guard.prepare_capture(iterator)
    try:
        yield model.train_function
    finally:
        guard.uninstall()


def call_step(function, iterator):
    """One call of a train function, waited for: its results are on the host when it returns."""
    np.asarray(tf.nest.flatten(function(iterator))[0])


def traced_function(function):
    """The `tf.function` a train function calls, that traces the step; None where it is not found.

    tf_keras's train function is that `tf.function` (behind the guard's
    reporting wrapper, with the suite); Keras 3's is a plain function that
    calls the one it holds in its closure.
    """
    function = getattr(function, "function", function)  # the guard's wrapper keeps the function it calls
    if hasattr(function, "get_concrete_function"):
        return function
    cells = getattr(function, "__closure__", None) or ()
    return next((cell.cell_contents for cell in cells if hasattr(cell.cell_contents, "get_concrete_function")), None)


def graph_ops(concrete):
    """Ops in the graph of the concrete function `concrete` and in the functions it calls (conditionals' branches)."""
    graph_def = concrete.graph.as_graph_def()
    return len(graph_def.node) + sum(len(function.node_def) for function in graph_def.library.function)


def step_guard_of(guard):
    """The `StepGuard` a `NaNGuard` armed for the fit it is in (None outside a fit or without one)."""
    return guard.run.step_guard


def snapshot_bytes(step_guard):
    """Bytes the weights' snapshot of `step_guard` holds now (0 without a snapshot)."""
    return sum(int(tf.size(shadow)) * shadow.dtype.size for shadow in step_guard.shadows or [])


def trainable_bytes(model):
    """Bytes of the trainable variables `model` computes with: one copy of the weights the snapshot is held to."""
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in _computed_with(model)[0] if v.trainable)
