"""A run's configuration and outcomes as HParams columns: the values (pure), and a small sweep read back."""

import math

import numpy as np
import pytest

from ptycho_callbacks import hparams, stats
from ptycho_callbacks.record import RunRecord

WEIGHTS = {"trimmed_obj_loss": 0.0, "intensity_scaler_inv_loss": 1.0, "pred_intensity_loss": 1.0}


def _record(**changes):
    truth = np.linspace(1.0, 2.0, 50)
    fields = dict(
        scenario="gs2_base", status="completed",
        config={"nphotons": 1e9, "N": 64, "gridsize": 2, "intensity_scale": 988.212,
                "intensity_scale_trainable": True, "loss_weights": dict(WEIGHTS), "learning_rate": 1e-3,
                "batch_size": 16, "optimizer": "Adam", "keras_version": "3.15.1"},
        history={"loss": [5.0, 2.0, 3.0], "pred_intensity_loss": [4.0, 1.0, 2.5],
                 "intensity_scaler_inv_loss": [1.0, 1.0, 0.5], "trimmed_obj_loss": [0.5, 0.4, 0.3],
                 "lr": [1e-3] * 3},
        log_scale={"found": True, "final": math.log(1000.0)},
        prediction={"amplitude_bias": stats.amplitude_bias(truth - 0.25, truth),
                    "phase_bias": stats.phase_bias(truth + 0.1, truth)})
    fields.update(changes)
    return RunRecord(**fields)


@pytest.mark.core
def test_the_configuration_becomes_one_hparam_each_with_one_per_loss_weight():
    values = hparams.hparam_values(_record())
    assert values == {"scenario": "gs2_base", "nphotons": 1e9, "N": 64, "gridsize": 2, "intensity_scale": 988.212,
                      "intensity_scale_trainable": True, "learning_rate": 1e-3, "batch_size": 16,
                      "optimizer": "Adam", "keras_version": "3.15.1", "weight_trimmed_obj_loss": 0.0,
                      "weight_intensity_scaler_inv_loss": 1.0, "weight_pred_intensity_loss": 1.0}


@pytest.mark.core
def test_outcomes_are_final_and_best_loss_per_component_scale_bias_and_nan():
    metrics = hparams.metric_values(_record())
    tag = hparams.METRIC_TAG_PREFIX
    assert metrics[tag + "final_loss"] == 3.0 and metrics[tag + "best_loss"] == 2.0
    assert metrics[tag + "final_pred_intensity_loss"] == 2.5 and metrics[tag + "best_pred_intensity_loss"] == 1.0
    assert metrics[tag + "best_intensity_scaler_inv_loss"] == 0.5
    assert metrics[tag + "trained_scale"] == pytest.approx(1000.0)
    assert metrics[tag + "scale_ratio"] == pytest.approx(1000.0 / 988.212)
    assert metrics[tag + "amp_bias_mean"] == pytest.approx(-0.25) and metrics[tag + "amp_bias_mae"] == \
        pytest.approx(0.25)
    assert metrics[tag + "phase_bias_median"] == pytest.approx(0.1)
    assert metrics[tag + "went_nan"] == 0.0 and metrics[tag + "nan_step"] == hparams.NO_NAN_STEP
    assert metrics[tag + "epochs"] == 3.0
    assert all(math.isfinite(value) for value in metrics.values())
    declared = {hparams.METRIC_TAG_PREFIX + c.name for c in hparams.columns(_record()) if c.kind == hparams.METRIC}
    assert set(metrics) <= declared


@pytest.mark.core
def test_what_is_not_known_is_left_out_never_zero():
    record = _record(prediction={}, log_scale={"found": False}, config={"loss_weights": dict(WEIGHTS)},
                     history={})
    values, metrics = hparams.hparam_values(record), hparams.metric_values(record)
    assert values == {"scenario": "gs2_base", **{f"weight_{name}": w for name, w in WEIGHTS.items()}}
    tag = hparams.METRIC_TAG_PREFIX
    assert not any(key.startswith((tag + "amp_bias", tag + "phase_bias", tag + "trained_scale", tag + "scale_ratio",
                                   tag + "final_", tag + "best_")) for key in metrics), metrics
    # A prediction section whose statistics are undefined (no valid pixel) gives no bias either.
    undefined = _record(prediction={"amplitude_bias": stats.undefined_bias("no pixel"), "phase_bias": {}})
    assert not any("bias" in key for key in hparams.metric_values(undefined))
    # A configured scale of 0 gives no ratio (not inf).
    assert tag + "scale_ratio" not in hparams.metric_values(_record(config={"intensity_scale": 0.0}))


@pytest.mark.core
def test_a_nan_stop_is_a_failure_with_its_step_and_its_nan_loss_left_out_of_tensorboard():
    record = _record(status="stopped_nan", history={"loss": [5.0, math.nan], "pred_intensity_loss": [4.0, math.nan]},
                     nan_events=[{"epoch": 1, "batch": 0, "step": 5, "components": ["pred_intensity_loss"]}])
    assert hparams.session_status(record) == "STATUS_FAILURE"
    row = hparams.row(record)
    assert math.isnan(row["final_loss"]) and row["best_loss"] == 5.0  # the table shows the NaN
    metrics = hparams.metric_values(record)
    tag = hparams.METRIC_TAG_PREFIX
    assert tag + "final_loss" not in metrics and metrics[tag + "best_loss"] == 5.0
    assert metrics[tag + "went_nan"] == 1.0 and metrics[tag + "nan_step"] == 5.0
    # NaN in the history without an event: it went NaN, at a step nobody knows.
    unknown = _record(history={"loss": [1.0, math.inf]})
    assert hparams.row(unknown)["went_nan"] is True and hparams.row(unknown)["nan_step"] is None


@pytest.mark.core
@pytest.mark.parametrize("status, session", [("completed", "STATUS_SUCCESS"), ("stopped_nan", "STATUS_FAILURE"),
                                             ("failed", "STATUS_FAILURE"), ("interrupted", "STATUS_UNKNOWN"),
                                             ("running", "STATUS_RUNNING")])
def test_session_status_follows_the_record(status, session):
    assert hparams.session_status(_record(status=status)) == session


@pytest.mark.core
def test_values_of_the_wrong_type_in_a_foreign_record_are_unknown():
    record = _record(config={"nphotons": "lots", "N": True, "intensity_scale_trainable": "yes", "optimizer": 3,
                             "loss_weights": {"a_loss": "heavy"}, "learning_rate": math.nan},
                     history={"loss": ["x", None]}, log_scale={"found": True, "final": 1e6},
                     prediction={"amplitude_bias": {"count": 3, "mean": "low"}})
    values = hparams.hparam_values(record)
    assert values == {"scenario": "gs2_base"}
    metrics = hparams.metric_values(record)
    assert all(math.isfinite(v) for v in metrics.values())
    assert hparams.METRIC_TAG_PREFIX + "trained_scale" not in metrics  # exp(1e6) overflows


@pytest.mark.core
def test_two_runs_with_equal_hyperparameters_are_two_sessions():
    one, two = _record(started_at="2026-01-01T00:00:00+00:00"), _record(started_at="2026-01-01T00:05:00+00:00")
    assert hparams.hparam_values(one) == hparams.hparam_values(two)
    assert hparams.trial_id(one) != hparams.trial_id(two)


SWEEP = [(1e5, 1e-3), (1e6, 3e-3), (1e7, 1e-2)]


@pytest.mark.keras
def test_a_sweep_of_three_runs_reads_back_as_three_sessions(tmp_path):
    """Three tiny trainings with different nphotons and learning rates under one parent directory:
    TensorBoard's own reader finds one HParams session per run, with its values, outcomes and status."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins.hparams import metadata

    from ptycho_callbacks import default_callbacks
    from ptycho_callbacks._keras import keras
    from ptycho_callbacks.sim.data import simulate
    from ptycho_callbacks.sim.model import build_model

    parent = tmp_path / "sweep"
    for nphotons, rate in SWEEP:
        data = simulate(N=16, gridsize=2, n_scan=4, nphotons=nphotons, seed=3)
        keras.utils.set_random_seed(0)
        model = build_model(N=16, gridsize=2, n_filters=4, probe=data.probe, intensity_scale=data.intensity_scale,
                            learning_rate=rate)
        callbacks = default_callbacks(model, str(parent / f"np{nphotons:.0e}_lr{rate:g}"), verbose=0,
                                      config={"nphotons": nphotons, "N": 16, "gridsize": 2, "batch_size": 8,
                                              "intensity_scale": data.intensity_scale})
        model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=1, verbose=0, callbacks=callbacks)

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(parent))
    multiplexer.Reload()
    content = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    sessions = {run: tags for run, tags in content.items() if metadata.SESSION_START_INFO_TAG in tags}
    assert sorted(sessions) == sorted(f"np{n:.0e}_lr{r:g}/ptycho/train" for n, r in SWEEP)
    seen = set()
    for run, tags in sessions.items():
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        values = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                  for name, value in start.hparams.items()}
        seen.add((values["nphotons"], values["learning_rate"]))
        assert values["batch_size"] == 8 and values["N"] == 16 and values["optimizer"] == "Adam"
        assert values["keras_version"] == keras.__version__ and values["weight_pred_intensity_loss"] == 1.0
        end = metadata.parse_session_end_info_plugin_data(tags[metadata.SESSION_END_INFO_TAG])
        assert end.status == 1  # STATUS_SUCCESS
        experiment = metadata.parse_experiment_plugin_data(tags[metadata.EXPERIMENT_TAG])
        metric_tags = {info.name.tag for info in experiment.metric_infos}
        assert {"outcome/final_loss", "outcome/best_pred_intensity_loss", "outcome/nan_step"} <= metric_tags
        written = {tag for tag in multiplexer.GetAccumulator(run).Tags()["tensors"] if tag.startswith("outcome/")}
        assert written <= metric_tags and "outcome/final_loss" in written
        assert "outcome/amp_bias_mean" not in written  # no truth given: no bias, not a 0
    for (nphotons, rate), (expected_nphotons, expected_rate) in zip(sorted(seen), SWEEP):
        assert nphotons == expected_nphotons and rate == pytest.approx(expected_rate, rel=1e-6)
