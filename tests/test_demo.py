"""The main job end to end: both scenarios with the whole suite, read back from disk.

The demo is trained once for the session (the `demo` fixture of conftest.py, 3 epochs of the default
data and model); these tests and test_tensorboard_e2e.py read what it wrote.
"""

import os

import pytest

from ptycho_callbacks.record import RunRecord

import tensorboard_events

pytestmark = pytest.mark.keras


def test_stable_scenario_completes_with_every_callback_logging(demo):
    out = demo.out
    record = RunRecord.load(os.path.join(out, "stable", "record.json"))
    assert record.status == "completed" and not record.nan_events
    assert len(record.history["loss"]) == 3
    assert record.log_scale["found"] and record.log_scale["moved"]
    assert [s["name"] for s in record.stages] == ["raw_diffraction", "grouped_diffraction", "grouped_X_full",
                                                 "container_X", "prediction", "truth"]
    assert record.prediction["amplitude_bias"]["count"] > 0
    tags = set(tensorboard_events.scalars(os.path.join(out, "stable")))
    for tag in ("loss/batch/pred_intensity_loss", "loss/batch_movement_share/pred_intensity_loss", "loss/epoch/loss",
                "scale/batch/log_scale", "scale/epoch/exp_log_scale", "stages/container_X/mean",
                "stages/ratio/container_X_to_prediction", "bias/amplitude/mae"):
        assert tag in tags, tag


def test_nan_scenario_stops_at_the_failing_batch_with_weights_back(demo):
    out, lines = demo.out, demo.lines
    record = RunRecord.load(os.path.join(out, "nan_poisson", "record.json"))
    assert record.status == "stopped_nan"
    (event,) = record.nan_events
    assert event["components"][0] == "pred_intensity_loss" and event["weights_restored"]
    # 64 groups in batches of 16: 4 steps per epoch; the guard stops inside the failing step's epoch
    assert event["step"] == 4 * event["epoch"] + event["batch"] + 1
    assert record.batch_steps[-1] == event["step"]
    assert any(line.startswith("report comparing the scenarios") for line in lines)
    marker = tensorboard_events.scalars(os.path.join(out, "nan_poisson"))["nan/first_step"]
    assert marker == [(event["step"], float(event["step"]))]


def test_summary_compares_both_scenarios(demo):
    out = demo.out
    text = open(os.path.join(out, "summary.md")).read()
    assert "- Scenario count: 2" in text
    assert "## Scenario: stable" in text and "## Scenario: nan_poisson" in text
    assert "### NaN Event" in text
    rows = [line for line in text.splitlines() if line.startswith("| stable |") or line.startswith("| nan_poisson |")]
    assert rows[0].endswith("| No |") and rows[1].endswith("| Yes |")
