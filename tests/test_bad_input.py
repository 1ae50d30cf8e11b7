"""Bad input gets a clear error before training, or a clear note in the record and report:
never a crash deep in training, never a silent wrong number.

What a run leaves is read back from `record.json` (RunRecord.load) and `report.md`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks import Probe, default_callbacks
from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.intensity_scale_monitor import IntensityScaleMonitor
from ptycho_callbacks.callbacks.stage_statistics import StageStatistics
from ptycho_callbacks.record import SCHEMA_VERSION, RunRecord
from ptycho_callbacks.run_dir import resolve_run_dir

pytestmark = pytest.mark.keras

PROBE = 4
SEED = 0
"""Keras's random seed before each stand-in model (`make_model`) is built. The models run eagerly
(`run_eagerly=True`): one tiny step per epoch, tracing would cost more than it saves."""


def _probe(data):
    return {key: value[:PROBE] for key, value in data.model_inputs().items()}


def _fit(model, data, callbacks, epochs=1):
    """One step of 8 samples per epoch."""
    inputs = {key: value[:8] for key, value in data.model_inputs().items()}
    targets = {key: value[:8] for key, value in data.model_targets().items()}
    model.fit(inputs, targets, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_untrained(model, before):
    """The fit failed before any training step: no weight moved."""
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def _read_run(run_dir):
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as handle:
        return record, handle.read()


def _section(report, title):
    start = report.index(f"### {title}")
    end = report.find("\n### ", start + 1)
    return report[start:end if end >= 0 else None]


def _finding(record, code):
    matches = [f for f in record.findings if f["code"] == code]
    assert len(matches) == 1, [f["code"] for f in record.findings]
    return matches[0]


# ------------------------------------------------------------------ model without IntensityScaler
def test_model_without_intensity_scaler_says_so_in_the_scale_section(tmp_path, capsys):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(inputs))
    model.compile(optimizer="sgd", loss="mse")
    run = str(tmp_path / "plain")
    model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=2, verbose=0, callbacks=default_callbacks(model, run))

    record, report = _read_run(run)
    assert record.status == "completed"
    assert record.log_scale["found"] is False
    assert "log_scale_variable=" in record.log_scale["note"]
    assert "IntensityScaler" in record.log_scale["note"] and "'log_scale'" in record.log_scale["note"]
    # Nothing to tabulate: the section is one line saying what to pass, then the monitor's note.
    assert "### IntensityScaler State" not in report
    (scale,) = [line for line in report.splitlines() if line.startswith("**IntensityScaler State:**")]
    assert "No `log_scale` variable found" in scale
    assert "log_scale_variable" in scale
    assert any(line.startswith("- Note: ") and "IntensityScaler" in line for line in report.splitlines())
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("IntensityScaleMonitor")]
    assert len(printed) == 1
    assert "at train begin" in printed[0] and "See report.md §IntensityScaler State" in printed[0]

    # A second run asked for the same directory goes beside it; the first report stays.
    path, note = resolve_run_dir(run)
    assert path == run + "-2" and run in note
    assert _read_run(run)[1] == report


def test_a_log_scale_variable_that_is_not_a_variable_is_refused():
    with pytest.raises(ValueError, match=r"log_scale_variable must be the variable .* got float"):
        IntensityScaleMonitor(log_scale_variable=6.9)
    with pytest.raises(ValueError, match=r"log_scale_variable must hold one number.*holds 3"):
        IntensityScaleMonitor(log_scale_variable=tf.Variable(np.zeros(3)))


@pytest.mark.parametrize("configured", [float("nan"), float("inf"), 0.0, -2.0, 1 + 2j])
def test_a_configured_scale_that_is_not_a_positive_number_is_refused(configured):
    with pytest.raises(ValueError, match="configured_scale must be a positive finite number"):
        IntensityScaleMonitor(configured_scale=configured)


def test_a_config_intensity_scale_that_is_not_a_number_fails_at_train_begin(make_model, small_data, tmp_path):
    model = make_model(SEED, run_eagerly=True)
    before = _weights(model)
    callbacks = default_callbacks(model, str(tmp_path / "run"), config={"intensity_scale": "auto"}, verbose=0)
    with pytest.raises(ValueError, match=r"configured intensity_scale must be a positive finite number, got 'auto'"):
        _fit(model, small_data, callbacks)
    _assert_untrained(model, before)
    # The report comes after the monitor in the list and never began: the fit's end still writes it.
    record = RunRecord.load(str(tmp_path / "run" / "record.json"))
    assert record.status == "failed" and record.findings[-1]["code"] == "training_failed"
    assert (tmp_path / "run" / "report.md").exists()


# ------------------------------------------------------------------ stages
@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 16, 16, 4), np.float32), r"stage 'raw': the array is empty \(shape \(0, 16, 16, 4\)\)"),
    (np.array(["1.0", "2.0"]), r"stage 'raw': the array must be numeric .* got dtype <U3"),
    (np.array([None, 1.0]), r"stage 'raw': the array must be numeric .* got dtype object"),
    (np.array([True, False]), r"stage 'raw': the array must be numeric .* got dtype bool"),
    ("diffraction.npy", r"stage 'raw': the array must be numeric .* got dtype <U15"),
])
def test_a_stage_that_is_not_numbers_is_refused_at_construction(array, message):
    with pytest.raises(ValueError, match=message):
        StageStatistics([("raw", array)])


@pytest.mark.parametrize("name", ["container_X", "prediction", "truth"])
def test_a_complex_array_for_an_amplitude_stage_is_refused_at_construction(small_data, name):
    with pytest.raises(ValueError, match=rf"stage '{name}': the array is complex \(complex64\), but the report "
                                         rf"reads '{name}' as a real diffraction amplitude"):
        StageStatistics([{"name": name, "array": small_data.truth_object}])
    # Elsewhere complex values are allowed and summarised by their modulus.
    assert StageStatistics([{"name": "object", "array": small_data.truth_object}]).stages[0].name == "object"


def test_a_complex_layer_for_the_prediction_stage_fails_at_train_begin(make_model, small_data):
    model = make_model(SEED, run_eagerly=True)
    before = _weights(model)
    callback = StageStatistics([{"name": "prediction", "layer": "trimmed_obj"}], probe_inputs=_probe(small_data))
    with pytest.raises(ValueError, match=r"stage 'prediction': the output of layer 'trimmed_obj' is complex"):
        _fit(model, small_data, [callback])
    _assert_untrained(model, before)


@pytest.mark.parametrize("make_callback", [
    lambda probe: StageStatistics([{"name": "p", "layer": "pred_amplitude"}], probe_inputs=probe),
    lambda probe: IntensityScaleMonitor(probe_inputs=probe, verbose=0),
], ids=["StageStatistics", "IntensityScaleMonitor"])
def test_complex_probe_inputs_for_a_real_model_input_fail_at_train_begin(make_model, small_data, make_callback):
    probe = _probe(small_data)
    probe["input"] = probe["input"].astype(np.complex64)  # Keras would silently drop the imaginary part
    model = make_model(SEED, run_eagerly=True)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"probe_inputs\['input'\] is complex \(complex64\) but the model "
                                         r"input 'input' is float32"):
        _fit(model, small_data, [make_callback(probe)])
    _assert_untrained(model, before)


@pytest.mark.parametrize("change, message", [
    (lambda p: {"input": p["input"]}, r"probe_inputs has no entry for the model input\(s\) \['input_positions'\]"),
    (lambda p: {**p, "input": p["input"][..., :2]},
     r"probe_inputs\['input'\] has shape \(4, 16, 16, 2\); the model input 'input' takes \(batch, 16, 16, 4\)"),
])
def test_probe_inputs_that_do_not_fit_the_model_fail_at_train_begin(make_model, small_data, change, message):
    callback = StageStatistics([{"name": "p", "layer": "pred_amplitude"}], probe_inputs=change(_probe(small_data)))
    with pytest.raises(ValueError, match=message):
        _fit(make_model(SEED, run_eagerly=True), small_data, [callback])


def test_non_numeric_probe_inputs_are_refused_at_construction(small_data):
    probe = {**_probe(small_data), "input_positions": np.array([["a"]] * PROBE)}
    with pytest.raises(ValueError, match=r"probe_inputs\['input_positions'\] must be numeric"):
        IntensityScaleMonitor(probe_inputs=probe)


def test_nan_in_stages_is_a_note_and_n_a_in_the_report(make_model, small_data, tmp_path):
    raw = small_data.raw_diffraction.copy()
    raw.flat[:3] = np.nan
    all_nan = np.full(10, np.nan, np.float32)
    stages = [("raw_diffraction", "Raw diffraction", "RawData", raw),
              ("grouped_X_full", "Grouped X (normalized)", "normalize_data", all_nan),
              ("container_X", "Container X", "PtychoDataContainer", small_data.container_X)]
    model = make_model(SEED, run_eagerly=True)
    run = str(tmp_path / "nan_stage")
    _fit(model, small_data, default_callbacks(model, run, stages=stages, verbose=0))

    record, report = _read_run(run)
    raw_stats = record.stages[0]["stats"]
    finite = raw[np.isfinite(raw)].astype(np.float64)
    assert (raw_stats["nan_count"], raw_stats["finite_count"]) == (3, raw.size - 3)
    assert raw_stats["mean"] == pytest.approx(finite.mean(), rel=1e-6)
    notes = [f["message"] for f in record.findings if f["code"] == "stage_nonfinite"]
    assert len(notes) == 2
    assert f"stage 'raw_diffraction' (Raw diffraction) holds 3 NaN and 0 infinite value(s) of {raw.size} " \
           f"at train begin; its mean, std, min and max cover the {raw.size - 3} finite value(s) only." == notes[0]
    assert "'grouped_X_full'" in notes[1] and "\n" not in notes[1]
    for note in notes:
        assert note in report
    assert "| Grouped X (normalized) | n/a (no finite value) |" in _section(report, "Stage Means")
    ratios = _section(report, "Stage Ratios")
    assert "| Raw diffraction → Grouped X (normalized) | n/a (mean of grouped_X_full undefined) |" in ratios
    assert "**Full chain product (raw→truth):** n/a (undefined ratio:" in report


def test_an_fn_stage_that_stops_returning_numbers_is_a_note_not_a_crash(make_model, small_data, tmp_path):
    calls = []

    def flaky(model):
        calls.append(1)
        return np.ones(3) if len(calls) == 1 else None

    model = make_model(SEED, run_eagerly=True)
    run = str(tmp_path / "flaky")
    _fit(model, small_data, default_callbacks(model, run, stages=[{"name": "flaky", "fn": flaky}], verbose=0),
         epochs=2)
    record, report = _read_run(run)
    assert record.status == "completed" and len(calls) == 3
    note = _finding(record, "stage_invalid")["message"]
    assert note.startswith("stage 'flaky': the array returned by fn(model) must be numeric")
    assert "after epoch 0 (step 1)" in note
    assert record.stages[0]["stats"]["count"] == 0
    assert "| flaky | n/a (no finite value) |" in _section(report, "Stage Means")


def test_an_fn_stage_that_returns_nothing_at_train_begin_fails_before_training(make_model, small_data):
    model = make_model(SEED, run_eagerly=True)
    before = _weights(model)
    callback = StageStatistics([{"name": "empty", "fn": lambda model: np.zeros(0)}])
    with pytest.raises(ValueError, match=r"stage 'empty': the array returned by fn\(model\) is empty"):
        _fit(model, small_data, [callback])
    _assert_untrained(model, before)


# ------------------------------------------------------------------ ground truth
def test_truth_with_zeros_is_a_note_and_n_a_where_ratios_are_undefined(make_model, small_data, tmp_path):
    model = make_model(SEED, run_eagerly=True)
    run = str(tmp_path / "zero_truth")
    truth = np.zeros_like(small_data.truth_object[:PROBE])
    _fit(model, small_data, default_callbacks(model, run, probe=Probe(_probe(small_data), truth=truth),
                                              stages=[("container_X", small_data.container_X)], verbose=0))
    record, report = _read_run(run)
    note = _finding(record, "truth_zeros")
    assert note["level"] == "warning" and f"truth is 0 at all {truth.size} pixels at train begin" in note["message"]
    scaling = _section(report, "Prediction ↔ Truth Scaling")
    reason = "n/a (no pixel where both prediction and truth are finite and nonzero)"
    assert f"| Ratio mean | {reason} |" in scaling
    assert f"* Best scalar: {reason}" in scaling
    assert "| Ratio count | 0 |" in scaling
    # The amplitude bias against a zero truth is still defined: it is the predicted amplitude.
    assert record.prediction["amplitude_bias"]["count"] == truth.size


def test_truth_with_some_zeros_and_nan_notes_what_is_skipped(make_model, small_data):
    truth = small_data.truth_object[:PROBE].copy()
    truth[0, :2] = 0
    truth[1, 0, 0, 0] = np.nan
    callback = StageStatistics([], probe_inputs=_probe(small_data), truth=truth, verbose=0)
    _fit(make_model(SEED, run_eagerly=True), small_data, [callback])
    record = callback.record
    zero_note = _finding(record, "truth_zeros")
    assert zero_note["level"] == "info"
    assert f"truth is 0 at {2 * 16 * 4} of {truth.size} pixels" in zero_note["message"]
    assert f"truth holds 1 NaN/Inf pixel(s) of {truth.size}" in _finding(record, "truth_nonfinite")["message"]
    assert record.prediction["scaling"]["count"] == truth.size - 2 * 16 * 4 - 1
    assert record.prediction["amplitude_bias"]["count"] == truth.size - 1


def test_truth_of_another_shape_is_refused_before_training(make_model, small_data):
    with pytest.raises(ValueError, match=r"truth has shape \(2, 16, 16, 4\) but probe_inputs holds 4 sample"):
        StageStatistics([], probe_inputs=_probe(small_data), truth=small_data.truth_object[:2])
    with pytest.raises(ValueError, match=r"the ground truth is empty"):
        StageStatistics([], probe_inputs=_probe(small_data), truth=np.zeros((0,), np.complex64))
    model = make_model(SEED, run_eagerly=True)
    before = _weights(model)
    callback = StageStatistics([], probe_inputs=_probe(small_data), truth=small_data.truth_object[:PROBE, :8])
    with pytest.raises(ValueError, match=r"has shape \(4, 16, 16, 4\) but truth has shape \(4, 8, 16, 4\)"):
        _fit(model, small_data, [callback])
    _assert_untrained(model, before)


def test_a_real_truth_for_a_complex_prediction_compares_amplitude_only(make_model, small_data, tmp_path):
    truth = np.abs(small_data.truth_object[:PROBE])
    model = make_model(SEED, run_eagerly=True)
    run = str(tmp_path / "real_truth")
    stages = [("container_X", small_data.container_X)]
    _fit(model, small_data, default_callbacks(model, run, stages=stages, probe=Probe(_probe(small_data), truth=truth),
                                              verbose=0))
    record, report = _read_run(run)
    assert "truth is real (float32) while the prediction 'trimmed_obj' is complex" in \
        _finding(record, "phase_not_compared")["message"]
    assert record.prediction["phase_bias"]["count"] == 0
    assert "* n/a (truth is real (float32) while the prediction 'trimmed_obj' is complex)" in \
        _section(report, "Phase Bias")
    assert record.prediction["amplitude_bias"]["count"] == truth.size


# ------------------------------------------------------------------ log directory
@pytest.mark.parametrize("make", [
    lambda log_dir: default_callbacks(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]), log_dir),
    lambda log_dir: StageStatistics([("a", np.ones(2))], log_dir=log_dir),
    lambda log_dir: IntensityScaleMonitor(log_dir=log_dir),
], ids=["default_callbacks", "StageStatistics", "IntensityScaleMonitor"])
def test_a_log_dir_that_cannot_be_written_fails_when_the_callback_is_created(tmp_path, make):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run directory's parent should be")
    log_dir = str(blocker / "run")
    with pytest.raises(OSError, match=r"log directory .*not_a_dir/run' cannot be written"):
        make(log_dir)


# ------------------------------------------------------------------ report CLI
def _cli_report(*args):
    """Runs the installed command line as a user would; returns (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "ptycho_callbacks.cli", "report", *args],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_report_cli_on_corrupt_or_newer_records_prints_one_error_line(tmp_path):
    good = RunRecord(scenario="good", status="completed")
    newer = dict(good.to_dict(), schema_version=SCHEMA_VERSION + 1)
    cases = {
        "truncated": (good.to_json()[:40], "invalid JSON"),
        "empty": ("", "invalid JSON"),
        "not_a_record": ("[1, 2, 3]", "a record must be a JSON object, got list"),
        "wrong_field": (json.dumps(dict(good.to_dict(), history=[1.0])), "record field 'history' must be dict"),
        "newer": (json.dumps(newer), f"schema_version {SCHEMA_VERSION + 1} is newer"),
    }
    for name, (text, fragment) in cases.items():
        run = tmp_path / name
        run.mkdir()
        (run / "record.json").write_text(text)
        status, out, err = _cli_report(str(run), "-o", str(tmp_path / f"{name}.md"))
        lines = err.strip().splitlines()
        assert status == 2 and out == "", name
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("ptycho-callbacks report: error: ") and str(run) in lines[0], (name, err)
        assert fragment in lines[0], (name, err)
        assert not (tmp_path / f"{name}.md").exists()
