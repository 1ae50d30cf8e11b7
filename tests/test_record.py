"""Tests of the RunRecord data holder and its JSON file format."""

import json
import math
import os

import numpy as np
import pytest

from ptycho_callbacks.record import (
    SCHEMA_VERSION,
    RecordError,
    RecordVersionError,
    RunRecord,
    atomic_write_text,
)

pytestmark = pytest.mark.core


def _reject_constant(name):
    raise AssertionError(f"bare {name} in JSON output")


def make_record():
    return RunRecord(
        scenario="gs2_base",
        started_at="2026-01-20T23:17:45+00:00",
        ended_at="2026-01-20T23:27:34+00:00",
        status="stopped_nan",
        base_dir="/runs/gs2_base",
        config={"nphotons": np.float64(1e9), "N": np.int64(64), "loss_weights": {"pred_intensity_loss": 1.0},
                "intensity_scale_trainable": np.bool_(True)},
        history={"loss": [1.5, math.nan], "pred_intensity_loss": [np.float32(1.25), -math.inf],
                 "lr": np.array([1e-3, 5e-4])},
        batch_history={"loss": [2.0, 1.0, math.inf]},
        batch_steps=[1, 2, 3],
        log_scale={"variable_name": "log_scale", "initial": 6.896, "final": 6.896, "history": [6.896, 6.896],
                   "declared_trainable": True, "in_trainable_variables": False, "moved": False,
                   "shared": True, "found": True, "how_found": "layer attribute", "note": None},
        nan_events=[{"epoch": 1, "batch": 3, "step": 7, "phase": "train",
                     "components": ["pred_intensity_loss", "loss"],
                     "values": {"pred_intensity_loss": -math.inf, "loss": math.nan},
                     "last_finite": {"pred_intensity_loss": 1.25, "loss": None},
                     "weights_restored": True, "nonfinite_weights": []}],
        stages=[{"name": "raw_diffraction", "label": "Raw diffraction", "source": "RawData",
                 "stats": {"count": 4, "mean": 0.5, "shape": (2, 2), "dtype": "float32"}}],
        prediction={},
        findings=[{"level": "warning", "code": "log_scale_not_trained", "message": "not tracked"}],
    )


def test_json_round_trip_keeps_nonfinite_values(tmp_path):
    record = make_record()
    text = record.to_json()
    data = json.loads(text, parse_constant=_reject_constant)  # standard JSON: no bare NaN/Infinity
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["history"]["loss"] == [1.5, "NaN"]
    assert data["history"]["pred_intensity_loss"] == [1.25, "-Infinity"]
    assert data["batch_history"]["loss"][2] == "Infinity"

    loaded = RunRecord.from_json(text)
    assert loaded == record
    assert math.isnan(loaded.history["loss"][1])
    assert loaded.history["pred_intensity_loss"][1] == -math.inf
    assert loaded.nan_events[0]["values"]["pred_intensity_loss"] == -math.inf
    assert loaded.nan_events[0]["last_finite"]["loss"] is None


def test_numpy_values_become_builtin_types():
    data = make_record().to_dict()
    assert type(data["config"]["nphotons"]) is float
    assert type(data["config"]["N"]) is int
    assert data["config"]["intensity_scale_trainable"] is True
    assert data["history"]["lr"] == [1e-3, 5e-4]
    assert type(data["history"]["pred_intensity_loss"][0]) is float
    assert data["stages"][0]["stats"]["shape"] == [2, 2]


def test_save_and_load_atomically(tmp_path):
    path = tmp_path / "record.json"
    record = make_record()
    record.save(path)
    record.status = "completed"
    record.save(path)  # overwrite in place
    assert RunRecord.load(path) == record
    assert RunRecord.load(path).status == "completed"
    assert sorted(os.listdir(tmp_path)) == ["record.json"]  # no temporary file left behind


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_equality_is_nan_aware_and_detects_differences():
    assert make_record() == make_record()
    other = make_record()
    other.history["loss"][0] = 1.6
    assert other != make_record()
    assert make_record() != "not a record"


def test_defaults_of_a_new_record():
    record = RunRecord(scenario="new")
    assert record.status == "running" and record.ended_at is None
    assert record.started_at.endswith("+00:00")
    assert RunRecord.from_json(record.to_json()) == record


def test_newer_schema_version_is_refused():
    data = json.loads(make_record().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(RecordVersionError, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        RunRecord.from_json(json.dumps(data))
    assert issubclass(RecordVersionError, ValueError)


@pytest.mark.parametrize("text, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"scenario": "x"}', "schema_version must be an integer"),
    ('{"schema_version": 0, "scenario": "x"}', "schema_version must be >= 1"),
    ('{"schema_version": 1}', "no 'scenario'"),
    ('{"schema_version": 1, "scenario": "x", "status": "exploded"}', "status must be one of"),
    ('{"schema_version": 1, "scenario": "x", "history": []}', "'history' must be dict"),
    ('{"schema_version": 1, "scenario": "x", "history": {"loss": 1}}', "'history' must be a list"),
    ('{"schema_version": 1, "scenario": "x", "stages": [1]}', "'stages' must be an object"),
    ('{"schema_version": 1, "scenario": "x", "surprise": 1}', "unknown record field"),
    ('{"schema_version": 1, "scenario": "x", "history": {"loss": [NaN]}}', "bare NaN"),
])
def test_malformed_input_raises_record_error(text, message):
    with pytest.raises(RecordError, match=message):
        RunRecord.from_json(text)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{broken")
    with pytest.raises(RecordError, match="record.json: invalid JSON"):
        RunRecord.load(path)
    with pytest.raises(FileNotFoundError):
        RunRecord.load(tmp_path / "missing.json")


def test_unserialisable_value_is_reported_with_its_place():
    record = RunRecord(scenario="x", config={"probe": object()})
    with pytest.raises(RecordError, match=r"config\['probe'\]"):
        record.to_json()


def test_add_finding():
    record = RunRecord(scenario="x")
    record.add_finding("warning", "log_scale_drift", "moved by 10%")
    assert record.findings == [{"level": "warning", "code": "log_scale_drift", "message": "moved by 10%"}]
    with pytest.raises(RecordError, match="level"):
        record.add_finding("fatal", "code", "message")
