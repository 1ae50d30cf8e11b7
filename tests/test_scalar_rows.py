"""write_rows: per-batch scalars reach the event file complete, in step order, with the scalar plugin's metadata."""

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

from ptycho_callbacks.callbacks import scalar_rows
from ptycho_callbacks.callbacks.scalar_rows import write_rows, write_scalars

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


def test_rows_of_several_writes_arrive_in_order(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    for start in (1, 5, 9):
        steps = np.arange(start, min(start + 4, 11))
        write_rows(writer, steps, ("loss/batch/loss", "scale/batch/log_scale"), np.stack([steps / 2, -steps], 1))
    writer.close()

    series = _scalars(tmp_path)
    assert series["loss/batch/loss"] == [(step, step / 2) for step in range(1, 11)]
    assert series["scale/batch/log_scale"] == [(step, -step) for step in range(1, 11)]


def test_non_finite_and_out_of_range_values_are_written_as_float32(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    write_scalars(writer, 7, {"nan": float("nan"), "big": 1e39, "neg": -np.inf})
    writer.close()

    series = _scalars(tmp_path)
    assert math.isnan(series["nan"][0][1])
    assert series["big"] == [(7, math.inf)] and series["neg"] == [(7, -math.inf)]


def test_many_writers_share_one_compiled_writer_without_a_retracing_warning(tmp_path, caplog):
    """Every fit makes new writers; TensorFlow must not take them for a function retraced in a loop."""
    with caplog.at_level(logging.WARNING):
        for fit in range(12):
            writer = tf.summary.create_file_writer(str(tmp_path / str(fit)))
            write_rows(writer, range(3), ("a", "b"), np.ones((3, 2)))
            writer.close()
    assert not [record for record in caplog.records if "retracing" in record.getMessage()]
    assert len(_scalars(tmp_path / "11")["b"]) == 3
    assert scalar_rows._raw_row_writer.cache_info().currsize == 1


def test_every_value_of_a_row_reads_back_exactly_as_float32(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    tags = tuple(f"t/{column}" for column in range(len(AWKWARD)))
    # Every value in every column once, the columns turned by a step per row.
    write_rows(writer, range(3), tags, [np.roll(AWKWARD, step) for step in range(3)])
    writer.close()

    series = _scalars(tmp_path)
    assert sorted(series) == sorted(tags)
    for column, tag in enumerate(tags):
        assert _same(series[tag], [(step, _float32(np.roll(AWKWARD, step)[column])) for step in range(3)]), tag


def test_a_row_is_one_event_with_the_scalar_metadata_on_every_value(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    write_rows(writer, [3, 4], ("a", "b/c", "ünïcode"), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    writer.close()

    expected = scalar_metadata.create_summary_metadata(display_name=None, description=None)
    events = _events(tmp_path)
    assert [event.step for event in events] == [3, 4]
    for event in events:
        assert [value.tag for value in event.summary.value] == ["a", "b/c", "ünïcode"]
        for value in event.summary.value:
            assert value.metadata == expected
            assert value.tensor.dtype == tf.float32.as_datatype_enum and not value.tensor.tensor_shape.dim


def test_steps_stay_in_order_across_writes_and_sets_of_tags(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    write_scalars(writer, 1, {"a": 1.0, "b": 1.5})
    write_rows(writer, [2, 3, 4, 5], ("a", "b"), [[2, 2.5], [3, 3.5], [4, 4.5], [5, 5.5]])
    write_scalars(writer, 6, {"a": 6.0})  # b left out (undefined) at step 6
    write_rows(writer, np.arange(7, 80), ("a", "b"), np.stack([np.arange(7, 80), np.arange(7, 80) + 0.5], axis=1))
    write_scalars(writer, 80, {"b": 80.5})
    write_scalars(writer, 81, {})  # nothing to write
    writer.close()

    assert [event.step for event in _events(tmp_path)] == list(range(1, 81))
    series = _scalars(tmp_path)
    assert series["a"] == [(step, float(step)) for step in range(1, 80)]
    assert series["b"] == [(step, step + 0.5) for step in range(1, 81) if step != 6]


def test_more_rows_than_one_compiled_call_takes_are_all_written_in_order(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    rows = 2 * scalar_rows._SLOTS + 5
    write_rows(writer, np.arange(rows) * 10, ("x",), np.arange(rows)[:, None] / 4)
    writer.close()
    assert _scalars(tmp_path)["x"] == [(10 * row, row / 4) for row in range(rows)]


@pytest.mark.parametrize("values_dtype", [np.float64, np.float32])
def test_a_block_of_rows_writes_what_the_same_rows_written_one_by_one_write(tmp_path, values_dtype):
    tags = ("loss/batch/loss", "loss/batch/a", "scale/batch/log_scale")
    with np.errstate(over="ignore"):
        values = np.array([np.roll(AWKWARD, shift)[:3] for shift in range(10)], values_dtype)
    each = tf.summary.create_file_writer(str(tmp_path / "each"))
    for step, row in zip(range(100, 110), values):
        write_scalars(each, step, dict(zip(tags, row)))
    each.close()
    block = tf.summary.create_file_writer(str(tmp_path / "block"))
    write_rows(block, range(100, 110), tags, values)
    block.close()

    each, block = _scalars(tmp_path / "each"), _scalars(tmp_path / "block")
    assert sorted(each) == sorted(block) == sorted(tags)
    for tag in each:
        assert _same(block[tag], each[tag]), tag
    assert [event.step for event in _events(tmp_path / "block")] == list(range(100, 110))


def test_rows_of_another_shape_are_refused_and_empty_blocks_write_nothing(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with pytest.raises(ValueError, match="shape"):
        write_rows(writer, [1, 2], ("a", "b"), np.zeros((2, 3)))
    write_rows(writer, [], ("a",), np.zeros((0, 1)))
    write_rows(writer, [1], (), np.zeros((1, 0)))
    writer.close()
    assert _events(tmp_path) == []


def test_rows_of_tags_without_a_sound_template_go_one_value_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(scalar_rows, "_row_template", lambda tags: None)
    writer = tf.summary.create_file_writer(str(tmp_path))
    tags = ("a", "b", "c")
    write_rows(writer, [5, 6], tags, [AWKWARD[:3], AWKWARD[3:6]])
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
    template = scalar_rows._row_template(tags)
    assert template is not None
    serialized = template.bytes.tobytes()
    sentinels = (scalar_rows._SENTINEL_BITS + np.arange(2, dtype=np.uint32)).view("<f4")
    assert scalar_rows._sentinel_offsets(serialized, tags, sentinels) is not None
    assert scalar_rows._sentinel_offsets(serialized, ("a", "c"), sentinels) is None
    assert scalar_rows._sentinel_offsets(serialized, tags, sentinels[::-1]) is None
    assert scalar_rows._sentinel_offsets(serialized, tags, sentinels[[0, 0]]) is None


def test_tensorboards_data_provider_reads_the_rows(tmp_path):
    """The data path TensorBoard's dashboards use now: the multiplexer's accumulators and its data provider."""
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    write_rows(writer, range(12), ("loss/batch/loss", "loss/batch/a"), np.stack([np.arange(12.0), -np.arange(12.0)], 1))
    write_scalars(writer, 12, {"loss/batch/loss": float("nan"), "loss/batch/a": 1e39})
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
