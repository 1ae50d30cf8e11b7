"""ScalarBuffer: per-batch scalars reach the event file complete, in step order, with the scalar plugin's metadata."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptycho_callbacks.callbacks.scalar_buffer import ScalarBuffer

pytestmark = pytest.mark.keras


def _scalars(log_dir):
    """{tag: [(step, value)]} as TensorBoard's own reader sees it, with the plugin each tag is filed under."""
    reader = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    reader.Reload()
    series = {}
    for tag in reader.Tags()["tensors"]:
        assert reader.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
        series[tag] = [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in reader.Tensors(tag)]
    return series


def test_rows_arrive_in_order_with_a_write_every_max_rows(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer, max_rows=4, max_seconds=1e9)
    for step in range(1, 11):
        buffer.add(step, {"loss/batch/loss": step / 2, "scale/batch/log_scale": -step})
        assert len(buffer) == step % 4  # written at 4 and 8
    buffer.flush()
    assert len(buffer) == 0
    writer.close()

    series = _scalars(tmp_path)
    assert series["loss/batch/loss"] == [(step, step / 2) for step in range(1, 11)]
    assert series["scale/batch/log_scale"] == [(step, -step) for step in range(1, 11)]


def test_a_new_set_of_tags_writes_what_is_pending_first(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer)
    buffer.add(1, {"a": 1.0, "share": 0.5})
    buffer.add(2, {"a": 2.0})  # a share left out (undefined) at step 2
    buffer.add(3, {"a": 3.0, "share": 0.25})
    buffer.add(4, {})  # nothing to write at step 4
    assert len(buffer) == 1
    buffer.flush()
    writer.close()

    series = _scalars(tmp_path)
    assert [step for step, _ in series["a"]] == [1, 2, 3]
    assert series["share"] == [(1, 0.5), (3, 0.25)]


def test_non_finite_and_out_of_range_values_are_written_as_float32(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer)
    buffer.add(7, {"nan": float("nan"), "big": 1e39, "neg": -np.inf})
    buffer.flush()
    writer.close()

    series = _scalars(tmp_path)
    assert math.isnan(series["nan"][0][1])
    assert series["big"] == [(7, math.inf)] and series["neg"] == [(7, -math.inf)]


def test_rows_older_than_max_seconds_are_written_at_the_next_add(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ptycho_callbacks.callbacks.scalar_buffer.time.monotonic", lambda: clock[0])
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer, max_rows=1000, max_seconds=5.0)
    buffer.add(1, {"a": 1.0})
    clock[0] += 4.0
    buffer.add(2, {"a": 2.0})
    assert len(buffer) == 2
    clock[0] += 1.5
    buffer.add(3, {"a": 3.0})
    assert len(buffer) == 0
    writer.flush()
    assert [step for step, _ in _scalars(tmp_path)["a"]] == [1, 2, 3]
    writer.close()


def test_many_buffers_compile_without_a_retracing_warning(tmp_path, caplog):
    """Every fit makes new buffers; TensorFlow must not take them for a function retraced in a loop."""
    with caplog.at_level(logging.WARNING):
        for fit in range(12):
            writer = tf.summary.create_file_writer(str(tmp_path / str(fit)))
            buffer = ScalarBuffer(writer)
            for step in range(3):
                buffer.add(step, {"a": 1.0, "b": 2.0})
            buffer.flush()
            writer.close()
    assert not [record for record in caplog.records if "retracing" in record.getMessage()]
    assert len(_scalars(tmp_path / "11")["b"]) == 3


def test_max_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_rows"):
        ScalarBuffer(tf.summary.create_file_writer(str(tmp_path)), max_rows=0)
