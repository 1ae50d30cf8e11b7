import json
import os

import numpy as np
import pytest

from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks import summary_report
from ptycho_callbacks.callbacks.summary_report import SummaryReport
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.render import fmt

import tensorboard_events

pytestmark = pytest.mark.keras

SEED = 4
"""Keras's random seed before each stand-in model (`make_model`) is built."""


class RecordOnDisk(keras.callbacks.Callback):
    """Reads record.json from disk at each epoch start (after the report wrote the previous epoch)."""

    def __init__(self, path):
        super().__init__()
        self.path, self.seen = path, []

    def on_epoch_begin(self, epoch, logs=None):
        if os.path.exists(self.path):
            self.seen.append(len(RunRecord.load(self.path).history.get("loss", [])))


class Clock:
    """A stand-in for the report's clock: each reading is `tick` seconds after the previous one,
    and `EpochTime` adds an epoch's duration."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


class EpochTime(keras.callbacks.Callback):
    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.seconds


@pytest.fixture
def slow_epochs(monkeypatch):
    """Epochs of 10 s, record writes of 1 ms: the record is written after every epoch."""
    clock = Clock(tick=0.001)
    monkeypatch.setattr(summary_report, "monotonic", clock)
    return EpochTime(clock, 10.0)


def test_record_after_every_epoch_and_report_at_the_end(make_model, small_data, tmp_path, slow_epochs):
    run = str(tmp_path / "gs2")
    report = SummaryReport(run, config={"nphotons": 1e6, "N": 16, "gridsize": 2,
                                        "e_batch_intensity": small_data.e_batch_intensity}, spec_prefix="pinn/specs")
    watcher = RecordOnDisk(os.path.join(run, "record.json"))
    history = make_model(SEED).fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8,
                                   epochs=3, verbose=0, callbacks=[slow_epochs, report, watcher])
    assert watcher.seen == [0, 1, 2]

    with open(os.path.join(run, "record.json")) as f:
        saved = json.load(f)
    assert saved["scenario"] == "gs2" and saved["status"] == "completed" and saved["ended_at"]
    np.testing.assert_allclose(saved["history"]["loss"], history.history["loss"], rtol=1e-6)
    assert saved["history"]["lr"] == pytest.approx([1e-3] * 3)
    assert saved["config"]["loss_weights"] == {"trimmed_obj_loss": 0.0, "intensity_scaler_inv_loss": 1.0,
                                               "pred_intensity_loss": 1.0}

    text = open(os.path.join(run, "report.md")).read()
    for header in ("# Intensity Bias Summary", "## Scenario: gs2", "### Loss Composition",
                   "### Intensity Scale Comparison"):
        assert header in text
    assert "**IntensityScaler State**: n/a (log_scale was not watched; " in text  # no IntensityScaleMonitor
    # Alone, the report has no stages, truth or probe: each of those parts is one line saying what to pass.
    for missing in ("**Data-path stages**", "**Prediction ↔ Truth**", "**Physics Health**"):
        (line,) = [line for line in text.splitlines() if line.startswith(missing)]
        assert "pass `" in line and "`default_callbacks`" in line
    assert "### Normalization Invariant Check" not in text and "### Amplitude Bias" not in text
    assert "- Epochs trained: 3" in text
    assert f"- Total loss (final): {fmt(history.history['loss'][-1])}" in text
    assert "| Fallback scale | 125.0 |" in text  # sqrt(1e6) / (16 / 2)
    assert "**Spec Reference:** `pinn/specs/spec-ptycho-core.md §Normalization Invariants`" in text

    shown = tensorboard_events.texts(run)["report/summary"]
    assert len(shown) == 1 and "## Scenario: gs2" in shown[0][1]


def test_short_epochs_write_the_record_less_often_and_lose_nothing_at_the_end(make_model, small_data,
                                                                             tmp_path, monkeypatch):
    clock = Clock(tick=0.001)  # each write takes 1 ms: one every 50 ms at most
    monkeypatch.setattr(summary_report, "monotonic", clock)
    run = str(tmp_path / "short")
    watcher = RecordOnDisk(os.path.join(run, "record.json"))
    history = make_model(SEED).fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8,
                                   epochs=24, verbose=0,
                                   callbacks=[EpochTime(clock, 0.01), SummaryReport(run), watcher])
    # Epochs of 10 ms and the clock's own reading (1 ms): the fifth epoch end after a write is the
    # first 50 ms after it, so every fifth epoch is on disk, starting from the write at train begin.
    assert watcher.seen == [0] * 5 + [5] * 5 + [10] * 5 + [15] * 5 + [20] * 4
    record = RunRecord.load(os.path.join(run, "record.json"))
    assert record.status == "completed"
    np.testing.assert_allclose(record.history["loss"], history.history["loss"], rtol=1e-6)


def test_a_run_that_dies_leaves_its_record(make_model, small_data, tmp_path, slow_epochs):
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("user code failed")

    run = str(tmp_path / "dies")
    model = make_model(SEED)
    with pytest.raises(RuntimeError, match="user code failed"):
        model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8,
                  epochs=4, verbose=0, callbacks=[slow_epochs, SummaryReport(run), Boom()])
    record = RunRecord.load(os.path.join(run, "record.json"))
    assert len(record.history["loss"]) == 2 and record.status == "running"
    assert not [name for name in os.listdir(run) if name.startswith(".") or name.endswith(".tmp")]
    # Nothing told the callback (fit was not wrapped): the model's next fit closes the run.
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=1, verbose=0,
              callbacks=[SummaryReport(str(tmp_path / "next"))])
    assert RunRecord.load(os.path.join(run, "record.json")).status == "failed"
    assert os.path.exists(os.path.join(run, "report.md"))


def test_a_failed_fit_says_what_its_epoch_and_step_count(make_model, small_data, tmp_path):
    from ptycho_callbacks.callbacks.fit_exceptions import finish_on_exception

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("user code failed")

    run = str(tmp_path / "fails")
    model = make_model(SEED)
    finish_on_exception(model)
    with pytest.raises(RuntimeError, match="user code failed"):
        model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=4, verbose=0,
                  callbacks=[SummaryReport(run), Boom()])
    record = RunRecord.load(os.path.join(run, "record.json"))
    (finding,) = [f for f in record.findings if f["code"] == "training_failed"]
    # 16 samples in batches of 8: the second epoch (index 1) ends after 4 optimizer steps.
    assert finding["message"].startswith("Training was failed in epoch 1 (index from 0) with 4 optimizer steps done "
                                         "(`optimizer.iterations`) by RuntimeError: user code failed")


def test_needs_a_directory():
    with pytest.raises(ValueError, match="log_dir"):
        SummaryReport(None)


def test_unwritable_directory_fails_at_construction(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="cannot be written"):
        SummaryReport(str(blocker / "run"))
