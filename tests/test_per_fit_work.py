"""Every new fit of a model costs no new compiled function of ours and no TensorBoard writer beyond its directory's.

A sweep opens a new run directory for every fit; what our callbacks trace or
open per fit is paid again by each of them. After the first fit of a model in
a process, nothing of ours is traced any more, nor Keras's train function
that the NaN guard wraps, and each fit opens the one writer its new
directory needs.
"""

import collections
import os

import pytest
import tensorflow as tf
from tensorflow.python.framework import func_graph

from ptycho_callbacks import default_callbacks
from ptycho_callbacks.suite import Probe

pytestmark = pytest.mark.keras

SEED = 8


def test_a_second_and_third_fit_trace_nothing_of_ours_and_open_one_writer_each(make_model, small_data, tmp_path,
                                                                                 monkeypatch):
    traced = collections.Counter()
    writers = []
    # Every tf.function trace goes through func_graph_from_py_func (TensorFlow has no public hook for it).
    trace = func_graph.func_graph_from_py_func

    def counting_trace(name, python_func, *args, **kwargs):
        module = getattr(python_func, "__module__", None) or ""
        if module.startswith(("ptycho_callbacks", "keras", "tf_keras")):  # ours, and the (guarded) train step
            traced[f"{module}.{getattr(python_func, '__qualname__', name)}"] += 1
        return trace(name, python_func, *args, **kwargs)

    create_file_writer = tf.summary.create_file_writer

    def counting_writer(logdir, *args, **kwargs):
        writers.append(os.path.relpath(logdir, tmp_path))
        return create_file_writer(logdir, *args, **kwargs)

    monkeypatch.setattr(func_graph, "func_graph_from_py_func", counting_trace)
    monkeypatch.setattr(tf.summary, "create_file_writer", counting_writer)

    model = make_model(SEED)
    inputs = {key: value[:4] for key, value in small_data.model_inputs().items()}
    counts = small_data.model_targets()["pred_intensity"][:4]
    stages = [dict(name=name, label=label, source=source, array=array)
              for name, label, source, array in small_data.stages()]
    for fit in range(3):
        traced.clear()
        writers.clear()
        suite = default_callbacks(model, str(tmp_path / f"run-{fit}"), stages=stages, verbose=0,
                                  probe=Probe(inputs, truth=small_data.truth_object[:4], counts=counts))
        assert {type(callback).__name__ for callback in suite} >= {"NaNGuard", "StageStatistics", "PhysicsHealth"}
        model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=2, verbose=0,
                  callbacks=suite)
        if fit == 0:
            assert traced, "the first fit traces our compiled functions (or the count no longer sees traces)"
        else:
            assert not traced, f"fit {fit} traced again: {dict(traced)}"
        assert writers == [os.path.join(f"run-{fit}", "ptycho", "train")]
