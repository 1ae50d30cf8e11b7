"""ScalarBuffer: per-batch scalars reach the event file complete, in step order, with the scalar plugin's metadata."""

import glob
import logging
import math

import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

from ptycho_callbacks.callbacks import scalar_buffer
from ptycho_callbacks.callbacks.scalar_buffer import ScalarBuffer, write_scalars

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


def _events(log_dir):
    """The events of the summaries in `log_dir`, in the order they are in its event file."""
    (path,) = glob.glob(str(log_dir / "events.out.tfevents.*"))
    events = [event_pb2.Event.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]
    return [event for event in events if event.HasField("summary")]


def _float32(value):
    """`value` as float32 keeps it, beyond float32's range +-inf."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _same(series, expected):
    """Whether [(step, value)] `series` is `expected` exactly, NaN matching NaN."""
    return len(series) == len(expected) and all(
        step == want_step and (value == want or (math.isnan(value) and math.isnan(want)))
        for (step, value), (want_step, want) in zip(series, expected))


# NaN, infinities, beyond float32's range (+-inf then), its largest, tiny (-1e-45 a subnormal), negative, zeros.
AWKWARD = [float("nan"), math.inf, -math.inf, 1e39, -1e39, -2.5, 1e-30, -1e-45, 3.4028234e38, 0.1, 0.0, -0.0,
           123456.789]


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
    assert scalar_buffer._raw_row_writer.cache_info().currsize == 1


def test_max_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_rows"):
        ScalarBuffer(tf.summary.create_file_writer(str(tmp_path)), max_rows=0)


def test_every_value_of_a_row_reads_back_exactly_as_float32(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer)
    tags = tuple(f"t/{column}" for column in range(len(AWKWARD)))
    for step in range(3):  # every value in every column once, the columns turned by a step per row
        buffer.add(step, dict(zip(tags, np.roll(AWKWARD, step))))
    buffer.flush()
    writer.close()

    series = _scalars(tmp_path)
    assert sorted(series) == sorted(tags)
    for column, tag in enumerate(tags):
        assert _same(series[tag], [(step, _float32(np.roll(AWKWARD, step)[column])) for step in range(3)]), tag


def test_a_row_is_one_event_with_the_scalar_metadata_on_every_value(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer)
    buffer.add(3, {"a": 1.0, "b/c": 2.0, "ünïcode": 3.0})
    buffer.add(4, {"a": 4.0, "b/c": 5.0, "ünïcode": 6.0})
    buffer.flush()
    writer.close()

    expected = scalar_metadata.create_summary_metadata(display_name=None, description=None)
    events = _events(tmp_path)
    assert [event.step for event in events] == [3, 4]
    for event in events:
        assert [value.tag for value in event.summary.value] == ["a", "b/c", "ünïcode"]
        for value in event.summary.value:
            assert value.metadata == expected
            assert value.tensor.dtype == tf.float32.as_datatype_enum and not value.tensor.tensor_shape.dim


def test_steps_stay_in_order_across_flushes_tag_changes_and_blocks(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer, max_rows=3, max_seconds=1e9)
    buffer.add(1, {"a": 1.0, "b": 1.5})
    buffer.add_rows([2, 3, 4, 5], ("a", "b"), [[2, 2.5], [3, 3.5], [4, 4.5], [5, 5.5]])
    buffer.add(6, {"a": 6.0})
    buffer.add_rows(np.arange(7, 80), ("a", "b"), np.stack([np.arange(7, 80), np.arange(7, 80) + 0.5], axis=1))
    buffer.add(80, {"b": 80.5})
    buffer.flush()
    writer.close()

    assert [event.step for event in _events(tmp_path)] == list(range(1, 81))
    series = _scalars(tmp_path)
    assert series["a"] == [(step, float(step)) for step in range(1, 80)]
    assert series["b"] == [(step, step + 0.5) for step in range(1, 81) if step != 6]


def test_a_flush_of_more_rows_than_one_compiled_call_takes_keeps_them_all_in_order(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer, max_rows=1000)
    rows = 2 * scalar_buffer._SLOTS + 5
    buffer.add_rows(np.arange(rows) * 10, ("x",), np.arange(rows)[:, None] / 4)
    buffer.flush()
    writer.close()
    assert _scalars(tmp_path)["x"] == [(10 * row, row / 4) for row in range(rows)]


def _add_each(buffer, steps, tags, values):
    for step, row in zip(steps, values):
        buffer.add(step, dict(zip(tags, row)))


@pytest.mark.parametrize("values_dtype", [np.float64, np.float32])
def test_add_rows_writes_what_the_same_rows_added_one_by_one_write(tmp_path, values_dtype):
    tags = ("loss/batch/loss", "loss/batch/a", "scale/batch/log_scale")
    with np.errstate(over="ignore"):
        values = np.array([np.roll(AWKWARD, shift)[:3] for shift in range(10)], values_dtype)
    for name, add in (("each", _add_each), ("block", ScalarBuffer.add_rows)):
        writer = tf.summary.create_file_writer(str(tmp_path / name))
        buffer = ScalarBuffer(writer, max_rows=4, max_seconds=1e9)
        add(buffer, range(100, 110), tags, values)
        assert len(buffer) == 2  # written at 4 and 8 either way
        add(buffer, [110], ("other",), [[1.0]])
        assert len(buffer) == 1
        buffer.flush()
        writer.close()

    each, block = _scalars(tmp_path / "each"), _scalars(tmp_path / "block")
    assert sorted(each) == sorted(block) == sorted(tags + ("other",))
    for tag in each:
        assert _same(block[tag], each[tag]), tag
    assert [event.step for event in _events(tmp_path / "block")] == list(range(100, 111))


def test_add_rows_writes_a_stale_buffer_after_its_first_row_as_add_would(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ptycho_callbacks.callbacks.scalar_buffer.time.monotonic", lambda: clock[0])
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer, max_rows=4, max_seconds=5.0)
    buffer.add(1, {"a": 1.0})
    clock[0] += 6.0
    buffer.add_rows([2, 3, 4, 5, 6, 7], ("a",), np.arange(2.0, 8.0)[:, None])
    assert len(buffer) == 1  # 1 and 2 at the stale check, 3-6 at max_rows, 7 held
    writer.flush()
    assert [step for step, _ in _scalars(tmp_path)["a"]] == [1, 2, 3, 4, 5, 6]
    buffer.flush()
    writer.close()


def test_add_rows_rejects_values_of_another_shape(tmp_path):
    buffer = ScalarBuffer(tf.summary.create_file_writer(str(tmp_path)))
    with pytest.raises(ValueError, match="shape"):
        buffer.add_rows([1, 2], ("a", "b"), np.zeros((2, 3)))
    buffer.add_rows([], ("a",), np.zeros((0, 1)))
    buffer.add_rows([1], (), np.zeros((1, 0)))
    assert len(buffer) == 0


def test_rows_of_tags_without_a_sound_template_go_one_value_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(scalar_buffer, "_row_template", lambda tags: None)
    writer = tf.summary.create_file_writer(str(tmp_path))
    buffer = ScalarBuffer(writer)
    tags = ("a", "b", "c")
    buffer.add_rows([5, 6], tags, [AWKWARD[:3], AWKWARD[3:6]])
    buffer.flush()
    write_scalars(writer, 7, {"a": -1e-45, "b": 2.0, "c": 3.0})
    writer.close()

    events = _events(tmp_path)
    assert [len(event.summary.value) for event in events] == [1] * 9  # the per-value path's own events
    series = _scalars(tmp_path)
    for column, tag in enumerate(tags):
        expected = [(5, _float32(AWKWARD[column])), (6, _float32(AWKWARD[3 + column]))]
        assert _same(series[tag][:2], expected), tag
    assert series["a"][2] == (7, _float32(-1e-45))


def test_a_template_is_refused_when_its_tags_or_sentinels_do_not_check_out():
    tags = ("a", "b")
    template = scalar_buffer._row_template(tags)
    assert template is not None
    serialized = template.bytes.tobytes()
    sentinels = (scalar_buffer._SENTINEL_BITS + np.arange(2, dtype=np.uint32)).view("<f4")
    assert scalar_buffer._sentinel_offsets(serialized, tags, sentinels) is not None
    assert scalar_buffer._sentinel_offsets(serialized, ("a", "c"), sentinels) is None
    assert scalar_buffer._sentinel_offsets(serialized, tags, sentinels[::-1]) is None
    assert scalar_buffer._sentinel_offsets(serialized, tags, sentinels[[0, 0]]) is None


def test_tensorboards_data_provider_reads_the_rows(tmp_path):
    """The data path TensorBoard's dashboards use now: the multiplexer's accumulators and its data provider."""
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    buffer = ScalarBuffer(writer, max_rows=5)
    buffer.add_rows(range(12), ("loss/batch/loss", "loss/batch/a"), np.stack([np.arange(12.0), -np.arange(12.0)], 1))
    buffer.add(12, {"loss/batch/loss": float("nan"), "loss/batch/a": 1e39})
    buffer.flush()
    writer.close()

    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0})
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    read = provider.read_scalars(context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=100)
    series = {tag: [(datum.step, datum.value) for datum in data] for tag, data in read["train"].items()}
    assert sorted(series) == ["loss/batch/a", "loss/batch/loss"]
    assert series["loss/batch/a"] == [(step, -float(step)) for step in range(12)] + [(12, math.inf)]
    assert series["loss/batch/loss"][:12] == [(step, float(step)) for step in range(12)]
    assert series["loss/batch/loss"][12][0] == 12 and math.isnan(series["loss/batch/loss"][12][1])
