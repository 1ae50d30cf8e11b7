"""A PtychoPINN-style training with the suite built by from_ptychopinn: the report has every section filled."""

import os

import numpy as np
import pytest

from ptycho_callbacks import default_callbacks, from_ptychopinn, stats
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.sim.data import ptychopinn_objects

pytestmark = pytest.mark.keras


def prepare_inputs(cfg, container):
    """What PtychoPINN's model.prepare_inputs gives fit: [X * intensity_scale, coords]."""
    return [container.X * cfg["intensity_scale"], container.coords]


def prepare_outputs(cfg, container):
    """PtychoPINN's model.prepare_outputs, for the stand-in's trimmed_obj of gridsize**2 channels."""
    scaled = cfg["intensity_scale"] * container.X
    return [container.Y_I * np.exp(1j * container.Y_phi), scaled, scaled ** 2]


def test_a_suite_from_ptychopinn_s_objects_fills_the_report(make_model, small_data, tmp_path):
    objects = ptychopinn_objects(small_data, loss_weights=(0.0, 1.0, 1.0), nepochs=2, batch_size=8)
    cfg, container = objects.cfg, objects.container
    model = make_model(random_seed=7)
    run = str(tmp_path / "gs2_pinn")
    callbacks = default_callbacks(model, run, verbose=0,
                                  **from_ptychopinn(cfg, container, objects.grouped, objects.raw,
                                                    probe_size=4))
    model.fit(prepare_inputs(cfg, container), prepare_outputs(cfg, container), batch_size=cfg["batch_size"],
              epochs=cfg["nepochs"], verbose=0, callbacks=callbacks)

    record = RunRecord.load(os.path.join(run, "record.json"))
    assert record.status == "completed"
    config = record.config
    comparison = stats.compare_scales(config["nphotons"], config["N"], config["e_batch_intensity"])
    assert comparison["dataset"] == pytest.approx(small_data.intensity_scale, rel=1e-6)
    assert config["normalize_gain"] == pytest.approx(small_data.normalize_gain, rel=1e-6)
    assert config["loss_weights"] == {"trimmed_obj_loss": 0.0, "intensity_scaler_inv_loss": 1.0,
                                      "pred_intensity_loss": 1.0}

    names = [stage["name"] for stage in record.stages]
    assert names == ["raw_diffraction", "grouped_diffraction", "grouped_X_full", "container_X", "prediction",
                     "truth"]
    means = [(stage["name"], stage["stats"]["mean"]) for stage in record.stages]
    assert all(mean is not None and mean > 0 for _, mean in means)
    invariant = stats.invariant_check(stats.stage_ratios(means))
    assert invariant["product"] is not None and invariant["passes"] is not None

    for section in ("amplitude_bias", "phase_bias"):
        assert record.prediction[section]["mean"] is not None, section
    assert any(candidate["value"] is not None for candidate in record.prediction["scaling"]["candidates"])
    assert record.physics and record.physics[-1]["photon_budget"]["mean"] is not None

    report = open(os.path.join(run, "report.md"), encoding="utf-8").read()
    dataset_row = next(line for line in report.splitlines() if line.startswith("| Dataset-derived scale"))
    shown = float(dataset_row.split("|")[2])
    assert shown == pytest.approx(small_data.intensity_scale, rel=1e-3)
    assert "**Full chain product (raw→truth):** n/a" not in report
    assert "| Prediction → truth | n/a |" not in report
