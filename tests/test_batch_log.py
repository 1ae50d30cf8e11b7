"""BatchLog and the block forms of the loss statistics: a block of batches gives what batch-by-batch gives."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptycho_callbacks import stats
from ptycho_callbacks.batch_log import BatchLog, row_groups, tracker_batch_values

pytestmark = pytest.mark.core

NAMES = ["loss", "a_loss", "b_loss"]
values_ = st.one_of(st.floats(-1e7, 1e7), st.sampled_from([math.nan, math.inf, -math.inf]))
maybe = st.one_of(st.none(), values_)


def _row(columns, index):
    """{name: float} of row `index` of masked columns, the masked entries left out."""
    return {name: float(column[index]) for name, column in columns.items() if not np.ma.getmaskarray(column)[index]}


def _columns(rows, names):
    return {name: np.ma.masked_array([np.nan if row[j] is None else row[j] for row in rows],
                                     mask=[row[j] is None for row in rows]) for j, name in enumerate(names)}


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-300)


def _split_total(row, weights):
    """The definition, one row at a time: weight x value of each component there, and the total less their sum
    when the total and every one of them are finite."""
    weighted = {name: weight * row[name] for name, weight in weights.items() if name in row}
    finite = [row.get("loss"), *weighted.values()]
    if weighted and all(value is not None and math.isfinite(value) for value in finite):
        return weighted, row["loss"] - sum(weighted.values())
    return weighted, None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(maybe, maybe, maybe), min_size=1, max_size=8),
       st.tuples(values_, values_, values_), st.sampled_from([0.0, 0.5, 1.0, math.nan]))
def test_block_shares_and_residual_are_those_of_each_row_alone(rows, first_row, b_weight):
    weights = {"a_loss": 2.0, "b_loss": b_weight}
    columns = _columns(rows, NAMES)
    first = dict(zip(NAMES, first_row))
    shares = stats.movement_share_rows(first, columns, weights)
    weighted, residual = stats.split_total_rows(columns, weights)
    for index in range(len(rows)):
        row = _row(columns, index)
        expected = stats.movement_shares(first, row, weights)["shares"]
        assert _row(shares, index) == pytest.approx(expected, rel=1e-12), (row, first)
        expected_weighted, expected_residual = _split_total(row, weights)
        got = _row(weighted, index)
        assert set(got) == set(expected_weighted)
        assert all(_same(got[name], value) for name, value in expected_weighted.items())
        if expected_residual is None:
            assert np.ma.getmaskarray(residual)[index]
        else:
            assert float(residual[index]) == pytest.approx(expected_residual, rel=1e-9, abs=1e-6)


def test_tracker_values_are_each_batchs_own_and_not_counted_ones_are_left_out():
    # Two trackers; the second counts nothing in the second batch.
    states = [[4.0, 2.0, 1.0, 1.0], [10.0, 4.0, 1.0, 1.0], [13.0, 5.0, 4.0, 2.0]]
    values, counted = tracker_batch_values(states, np.zeros(4))
    np.testing.assert_allclose(values[:, 0], [2.0, 3.0, 3.0])
    assert counted[:, 1].tolist() == [True, False, True]
    assert values[0, 1] == 1.0 and values[2, 1] == 3.0 and math.isnan(values[1, 1])
    nan_total, _ = tracker_batch_values([[math.nan, 1.0, 0.0, 0.0]], np.zeros(4))
    assert math.isnan(nan_total[0, 0])


def test_notes_taken_in_blocks_give_the_values_taken_one_by_one():
    states = [np.array([2.0 * (i + 1), i + 1.0]) for i in range(7)]  # loss 2 every batch
    states[4] = np.array([states[3][0] + 100.0, 5.0])                 # batch 5: 100
    states[5] = np.array([states[4][0] + 3.0, 6.0])
    states[6] = np.array([states[5][0] + 5.0, 7.0])
    one_by_one, blocks = BatchLog(), BatchLog()
    single = []
    for step, state in enumerate(states, start=1):
        one_by_one.note(step, state, log_scale=0.1 * step)
        single.append(float(one_by_one.take(["loss"]).values["loss"][0]))
    taken = []
    for part in (states[:3], states[3:]):
        for state in part:
            step = len(taken) + 1
            blocks.note(step, state, log_scale=0.1 * step)
            taken.append(None)
        block = blocks.take(["loss"])
        taken[-len(part):] = block.values["loss"].tolist()
    assert single == taken == [2.0, 2.0, 2.0, 2.0, 100.0, 3.0, 5.0]
    assert blocks.last == {"loss": 5.0, "log_scale": pytest.approx(0.7)}


def test_a_reset_counts_from_zero_and_a_second_note_of_a_step_completes_it():
    log = BatchLog()
    log.note(1, np.array([6.0, 2.0]))
    log.note(1, log_scale=0.5)
    assert log.has_state(1) and log.has_log_scale(1) and not log.has_state(2)
    block = log.take(["loss"])
    assert block.values["loss"].tolist() == [3.0] and block.log_scale.tolist() == [0.5]
    assert log.has_state(1), "a taken step stays noted: a second callback does not note it again"
    log.reset()  # Keras reset its trackers: the next state counts from zero
    log.note(2, np.array([4.0, 1.0]))
    assert log.take(["loss"]).values["loss"].tolist() == [4.0]
    assert log.take(["loss"]) is None


def test_a_batch_noted_without_state_has_no_values_and_the_next_covers_the_gap():
    log = BatchLog()
    log.note(1, np.array([2.0, 1.0]), 0.0)
    log.note(2, log_scale=0.1)  # e.g. log_scale every step, the trackers every other one
    log.note(3, np.array([10.0, 3.0]), 0.2)
    block = log.take(["loss"])
    assert block.values["loss"].mask.tolist() == [False, True, False]
    assert float(block.values["loss"][2]) == 4.0  # (10 - 2) / (3 - 1): the two batches since the last state


def test_last_finite_values_skip_the_non_finite_ones():
    log = BatchLog()
    log.note(1, np.array([2.0, 1.0]), 0.5)
    log.note(2, np.array([math.nan, 2.0]), math.inf)
    log.take(["loss"])
    assert log.last_finite == {"loss": 2.0, "log_scale": 0.5}
    assert math.isnan(log.last["loss"]) and log.last["log_scale"] == math.inf


def test_due_after_max_rows_or_max_seconds(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ptycho_callbacks.batch_log.time.monotonic", lambda: clock[0])
    log = BatchLog(max_rows=3, max_seconds=5.0)
    assert not log.due(1)
    log.note(1, log_scale=0.0)
    log.note(2, log_scale=0.0)
    assert not log.due(3)
    clock[0] += 5.0
    assert log.due(3)
    assert not log.due(2), "a second note of the latest step goes into its block"
    log.take([])
    log.note(3, log_scale=0.0)
    log.note(4, log_scale=0.0)
    log.note(5, log_scale=0.0)
    assert log.due(6) and not log.due(5)


def test_rows_group_by_the_tags_present_and_keep_the_step_order():
    steps = np.arange(1, 6)
    columns = {
        "a": np.ma.masked_array([1.0, 2.0, 3.0, 4.0, 5.0], mask=[0, 0, 0, 0, 0]),
        "b": np.ma.masked_array([0.0, 0.0, 7.0, 8.0, 0.0], mask=[1, 1, 0, 0, 1]),
        "c": np.ma.masked_all(5),
    }
    groups = row_groups(steps, columns)
    assert [(g[0].tolist(), g[1], g[2].tolist()) for g in groups] == [
        ([1, 2], ("a",), [[1.0], [2.0]]),
        ([3, 4], ("a", "b"), [[3.0, 7.0], [4.0, 8.0]]),
        ([5], ("a",), [[5.0]]),
    ]
    assert row_groups(steps, {"c": np.ma.masked_all(5)}) == []
