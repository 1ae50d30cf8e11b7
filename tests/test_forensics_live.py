"""NaN forensics end to end: NaNGuard(forensics=True) in model.fit, then `ptycho-callbacks replay`.

The model is the demo's `nan_poisson` one (ReLU amplitude head, high
learning rate). Its biases start at zero, so the sample whose input is all
zero predicts an intensity of exactly 0 at the first step: the Poisson NLL
takes log(0) there, the way PtychoPINN trainings go NaN, but at a known
step and sample.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ptycho_callbacks.nan.guard import NaNGuard
from ptycho_callbacks.demo import SCENARIOS
from ptycho_callbacks.cli import replay_main
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.sim import params as sim_params
from ptycho_callbacks.suite import Probe, default_callbacks

pytestmark = pytest.mark.keras

BATCH = 4
DEAD_SAMPLE = 2  # in the first batch (shuffle=False)
LOG_OF_POISSON_NLL = {"stage": "loss", "layer": "pred_intensity", "op": "Log", "loss": "negloglik",
                      "samples": [DEAD_SAMPLE]}
SEED = 0
"""Keras's random seed before each stand-in model (`make_model`) is built."""


def _fit(model, data, callbacks, dead_sample=DEAD_SAMPLE):
    inputs = {key: np.array(value) for key, value in data.model_inputs().items()}
    if dead_sample is not None:
        inputs["input"][dead_sample] = 0.0
    model.fit(inputs, data.model_targets(), batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=callbacks)


def _answer(forensics):
    return {key: forensics.get(key) for key in LOG_OF_POISSON_NLL}


def _probe(data):
    return ({key: value[:BATCH] for key, value in data.model_inputs().items()},
            data.model_targets()["pred_intensity"][:BATCH])


def test_guard_saves_the_failing_step_and_names_the_log_of_the_poisson_nll(make_model, small_data, tmp_path,
                                                                           capsys):
    run_dir = str(tmp_path / "run")
    guard = NaNGuard(log_dir=run_dir, forensics=True, verbose=0)
    _fit(make_model(SEED, **SCENARIOS["nan_poisson"]), small_data, [guard])
    (event,) = guard.record.nan_events
    assert (event["epoch"], event["batch"]) == (0, 0)
    folder = os.path.join(run_dir, "nan_forensics")
    assert os.path.isfile(os.path.join(folder, "manifest.json"))
    assert _answer(guard.record.forensics) == LOG_OF_POISSON_NLL
    assert guard.record.forensics["folder"] == folder

    capsys.readouterr()
    assert replay_main([run_dir, "--json"]) == 0  # offline, from the saved folder
    assert _answer(json.loads(capsys.readouterr().out)) == _answer(guard.record.forensics)


def test_suite_records_the_forensics_and_physics_health_in_record_and_report(make_model, small_data, tmp_path,
                                                                             capsys):
    run_dir = str(tmp_path / "run")
    model = make_model(SEED, **SCENARIOS["nan_poisson"])
    probe, counts = _probe(small_data)
    _fit(model, small_data, default_callbacks(model, run_dir, probe=Probe(probe, counts=counts), verbose=0))
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    assert record.status == "stopped_nan"
    assert _answer(record.forensics) == LOG_OF_POISSON_NLL
    assert record.physics and record.physics[0]["step"] == 0
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as handle:
        report = handle.read()
    assert "### NaN Forensics" in report and "- Op: `Log` in `negloglik`" in report
    assert "### Physics Health" in report

    capsys.readouterr()
    assert replay_main([run_dir, "--json"]) == 0
    assert _answer(json.loads(capsys.readouterr().out)) == _answer(record.forensics)


def test_a_finite_run_writes_no_forensics(make_model, small_data, tmp_path):
    run_dir = str(tmp_path / "run")
    model = make_model(SEED, **SCENARIOS["stable"])
    _fit(model, small_data, default_callbacks(model, run_dir, verbose=0), dead_sample=None)
    assert not os.path.exists(os.path.join(run_dir, "nan_forensics"))
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    assert record.status == "completed" and record.forensics is None and not record.nan_events


def _replay_in_a_fresh_process(run_dir, *options):
    command = [sys.executable, "-m", "ptycho_callbacks.cli", "replay", run_dir, "--json", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_fresh_process_replays_the_failing_step_of_a_model_with_global_state(make_model, small_data, tmp_path,
                                                                             capsys, monkeypatch):
    """PtychoPINN's traits: unnamed log_scale and probe, layers reading a global config, unregistered losses."""
    run_dir = str(tmp_path / "run")
    model = make_model(SEED, **SCENARIOS["nan_poisson"])
    log_scale = model.get_layer("intensity_scaler").w
    log_scale.assign(log_scale + 0.3)  # a value neither the config nor (under Keras 3) model.keras holds
    config = dict(N=16, gridsize=2, intensity_scale=float(small_data.intensity_scale))
    _fit(model, small_data, default_callbacks(model, run_dir, config=config, verbose=0))
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    assert not [f for f in record.findings if f["code"] == "nan_forensics_failed"], record.findings
    live = record.forensics
    assert _answer(live) == LOG_OF_POISSON_NLL

    # As in a fresh process: the global configuration holds no intensity_scale nor probe yet.
    monkeypatch.setattr(sim_params, "cfg", dict(sim_params.DEFAULTS))
    capsys.readouterr()
    assert replay_main([run_dir, "--json"]) == 2
    assert "--setup" in capsys.readouterr().err

    done = _replay_in_a_fresh_process(run_dir, "--setup", "ptycho_callbacks.sim.params:setup")
    assert done.returncode == 0, done.stderr[-3000:]
    offline = json.loads(done.stdout)
    assert _answer(offline) == _answer(live)
    assert set(offline["loss_components"]) == set(live["loss_components"]) == {
        "trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss"}
    for name, entry in live["loss_components"].items():
        if entry["value"] is None:
            assert offline["loss_components"][name]["value"] is None, name
        else:
            assert offline["loss_components"][name]["value"] == pytest.approx(entry["value"], rel=1e-5), name
        assert offline["loss_components"][name]["samples"] == entry["samples"], name
