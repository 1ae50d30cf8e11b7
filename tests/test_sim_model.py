import tempfile

import numpy as np
import pytest

from ptycho_callbacks._keras import IS_LEGACY
from ptycho_callbacks.sim.model import build_model

pytestmark = pytest.mark.keras

SEED = 0
"""Keras's random seed before each stand-in model (`make_model`) is built."""


def _log_scale(model):
    return float(np.asarray(model.get_layer("intensity_scaler").w))


@pytest.mark.parametrize("style", ["keras", "ptychopinn"])
def test_model_has_ptychopinn_interface(make_model, small_data, style):
    model = make_model(SEED, scaler_style=style)
    assert [t.name.split(":")[0] for t in model.inputs] == ["input", "input_positions"]
    assert list(model.output_names) == ["trimmed_obj", "intensity_scaler_inv", "pred_intensity"]
    scaler, inverse = model.get_layer("intensity_scaler"), model.get_layer("intensity_scaler_inv")
    assert type(scaler).__name__ == "IntensityScaler" and type(inverse).__name__ == "IntensityScaler_inv"
    assert scaler.w is inverse.w
    assert _log_scale(model) == pytest.approx(np.log(small_data.intensity_scale), abs=1e-6)
    obj, amplitude, intensity = model.predict(small_data.model_inputs(), verbose=0)
    assert np.iscomplexobj(obj)
    np.testing.assert_allclose(intensity, amplitude ** 2, rtol=1e-5)


@pytest.mark.parametrize("style", ["keras", "ptychopinn"])
def test_training_lowers_the_loss(make_model, small_data, style):
    model = make_model(SEED, scaler_style=style)
    history = model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=3,
                        epochs=4, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert set(history.history) >= {"loss", "trimmed_obj_loss", "intensity_scaler_inv_loss",
                                    "pred_intensity_loss"}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def _trained_log_scale_delta(make_model, data, style, trainable=True):
    model = make_model(SEED, scaler_style=style, scale_trainable=trainable, learning_rate=1e-2)
    before = _log_scale(model)
    model.fit(data.model_inputs(), data.model_targets(), batch_size=3, epochs=1, verbose=0)
    return abs(_log_scale(model) - before)


def test_keras_native_log_scale_trains(make_model, small_data):
    assert _trained_log_scale_delta(make_model, small_data, "keras") > 1e-4
    assert _trained_log_scale_delta(make_model, small_data, "keras", trainable=False) == 0.0


def test_ptychopinn_style_log_scale_is_only_trained_by_keras_2(make_model, small_data):
    """The fact a scale monitor must detect: under Keras 3 the plain tf.Variable
    says trainable=True, is missing from trainable_variables and never moves."""
    model = make_model(SEED, scaler_style="ptychopinn")
    variable = model.get_layer("intensity_scaler").w
    tracked = any(v is variable or getattr(v, "value", None) is variable
                  for v in model.trainable_variables)
    moved = _trained_log_scale_delta(make_model, small_data, "ptychopinn") > 1e-4
    assert variable.trainable
    if IS_LEGACY:
        assert tracked and moved
    else:
        assert not tracked and not moved


def test_nan_scenario_goes_non_finite_within_its_first_epochs():
    from ptycho_callbacks.demo import DemoConfig, run_demo

    config = DemoConfig(epochs=3, scenarios=["nan_poisson"])
    with tempfile.TemporaryDirectory() as out:
        histories = run_demo(out, config, callbacks_factory=lambda *_: [], verbose=0, log=lambda *_: None)
    losses = histories["nan_poisson"].history["loss"]
    assert not np.all(np.isfinite(losses))


def test_bad_model_parameters_are_refused(make_model):
    with pytest.raises(ValueError, match="scaler_style"):
        make_model(SEED, scaler_style="other")
    with pytest.raises(ValueError, match="gridsize"):
        build_model(N=16, gridsize=3)


def test_a_gridsize_1_stand_in_is_watched_like_the_gridsize_2_one(tmp_path):
    """One channel per sample: the suite finds log_scale, splits the loss and names the unnamed variables."""
    from ptycho_callbacks import default_callbacks
    from ptycho_callbacks.callbacks.variables import model_variables
    from ptycho_callbacks.record import RunRecord
    from ptycho_callbacks.sim.data import simulate

    data = simulate(N=16, gridsize=1, n_scan=4, nphotons=1e6, seed=1)
    model = build_model(N=16, gridsize=1, n_filters=4, probe=data.probe, intensity_scale=data.intensity_scale)
    assert model.input_shape[0][-1] == 1
    paths = [path for path, _ in model_variables(model)]
    assert "intensity_scaler.w" in paths and "probe_illumination.w" in paths and "Variable" not in paths
    run = str(tmp_path / "gs1")
    model.fit(data.model_inputs(), data.model_targets(), batch_size=4, epochs=1, verbose=0,
              callbacks=default_callbacks(model, run, config=dict(N=16, gridsize=1), verbose=0))
    record = RunRecord.load(f"{run}/record.json")
    assert record.status == "completed" and record.log_scale["found"]
    assert {"trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss"} <= set(record.history)
