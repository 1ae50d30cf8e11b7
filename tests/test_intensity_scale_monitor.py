import math

import numpy as np
import pytest

from ptycho_callbacks._keras import IS_LEGACY, keras
from ptycho_callbacks.callbacks.intensity_scale_monitor import IntensityScaleMonitor

import tensorboard_events

pytestmark = pytest.mark.keras

SEED = 2
"""Keras's random seed before each stand-in model (`make_model`) is built."""


def _fit(make_model, data, monitor, style="keras", epochs=2, **kwargs):
    model = make_model(SEED, learning_rate=1e-2, scaler_style=style, **kwargs)
    model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=epochs, verbose=0,
              shuffle=False, callbacks=[monitor])
    return model


def _codes(record):
    return [f["code"] for f in record.findings]


@pytest.mark.parametrize("style", ["keras", "ptychopinn"])
def test_log_scale_findings_for_both_scaler_styles(make_model, small_data, tmp_path, style):
    monitor = IntensityScaleMonitor(log_dir=str(tmp_path), verbose=0)
    model = _fit(make_model, small_data, monitor, style)
    state = monitor.record.log_scale
    variable = model.get_layer("intensity_scaler").w
    assert state["found"] and state["shared"] is True and state["declared_trainable"] is True
    assert state["initial"] == pytest.approx(math.log(small_data.intensity_scale), abs=1e-6)
    assert state["final"] == pytest.approx(float(np.asarray(variable)))
    trained = style == "keras" or IS_LEGACY
    assert state["in_trainable_variables"] is trained
    assert state["moved"] is trained
    assert ("log_scale_not_trained" in _codes(monitor.record)) is (not trained)

    written = tensorboard_events.scalars(str(tmp_path))
    assert [s for s, _ in written["scale/batch/log_scale"]] == [1, 2, 3, 4]
    assert [s for s, _ in written["scale/epoch/log_scale"]] == [1, 2]  # epochs completed
    np.testing.assert_allclose([v for _, v in written["scale/epoch/log_scale"]], state["history"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in written["scale/epoch/exp_log_scale"]],
                               np.exp(state["history"]), rtol=1e-5)
    np.testing.assert_allclose([v for _, v in written["scale/epoch/ratio_to_configured"]],
                               np.exp(state["history"]) / small_data.intensity_scale, rtol=1e-5)


def test_batch_values_taken_from_the_nan_guard_are_those_of_each_step(make_model, small_data, tmp_path):
    class Truth(keras.callbacks.Callback):
        """log_scale as each batch leaves it, read after every callback of the suite."""

        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append(float(np.asarray(self.model.get_layer("intensity_scaler").w)))

    from ptycho_callbacks import default_callbacks

    model = make_model(SEED, learning_rate=1e-2, scaler_style="keras")  # a log_scale Keras 3 trains too
    run = str(tmp_path / "suite")
    truth = Truth()
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=2, verbose=0,
              shuffle=False, callbacks=default_callbacks(model, run, verbose=0) + [truth])
    written = tensorboard_events.scalars(run)["scale/batch/log_scale"]
    assert [s for s, _ in written] == [1, 2, 3, 4]
    assert len(set(truth.values)) == 4  # it moved at every step: a stale value would show
    np.testing.assert_allclose([v for _, v in written], truth.values, rtol=1e-7)


def test_drift_from_the_configured_scale_is_reported_once(make_model, small_data):
    monitor = IntensityScaleMonitor(configured_scale=2 * small_data.intensity_scale, verbose=0)
    _fit(make_model, small_data, monitor, epochs=2)
    assert _codes(monitor.record).count("log_scale_drift") == 1
    message = next(f["message"] for f in monitor.record.findings if f["code"] == "log_scale_drift")
    drift = math.exp(monitor.record.log_scale["history"][0]) / (2 * small_data.intensity_scale) - 1
    assert f"{100 * drift:+.1f}%" in message
    # 16 samples, batches of 8: the epoch index counts from 0, the steps are those done.
    assert "at the end of epoch 0 (index from 0; 2 train steps done;" in message and "0-based; step" not in message


def test_a_finding_is_printed_as_one_line_saying_when_and_where_to_look(make_model, small_data, capsys):
    monitor = IntensityScaleMonitor(configured_scale=2 * small_data.intensity_scale)
    _fit(make_model, small_data, monitor, epochs=2)
    printed = capsys.readouterr().out.splitlines()
    drift = [line for line in printed if "drifted" in line]
    assert len(drift) == 1
    assert drift[0].startswith("IntensityScaleMonitor: exp(log_scale) = ")
    assert "at the end of epoch 0" in drift[0] and drift[0].endswith("See TensorBoard scale/epoch/ratio_to_configured.")


def test_scale_applied_twice_is_detected(make_model, small_data):
    already_divided = {"input": small_data.container_X[:4],  # X where s * X belongs
                       "input_positions": small_data.positions[:4]}
    monitor = IntensityScaleMonitor(probe_inputs=already_divided, verbose=0)
    _fit(make_model, small_data, monitor, epochs=1)
    assert "log_scale_double_applied" in _codes(monitor.record)

    correct = {k: v[:4] for k, v in small_data.model_inputs().items()}
    monitor = IntensityScaleMonitor(probe_inputs=correct, verbose=0)
    _fit(make_model, small_data, monitor, epochs=1)
    assert not {"log_scale_double_applied", "log_scale_not_applied"} & set(_codes(monitor.record))


def test_frozen_scale_that_does_not_move_is_not_a_warning(make_model, small_data):
    monitor = IntensityScaleMonitor(verbose=0)
    _fit(make_model, small_data, monitor, epochs=1, scale_trainable=False)
    assert monitor.record.log_scale["declared_trainable"] is False
    assert monitor.record.log_scale["moved"] is False
    assert not any(f["level"] == "warning" for f in monitor.record.findings)


def test_model_without_scaler_says_how_to_name_it(capsys):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    monitor = IntensityScaleMonitor()
    model.fit(np.ones((4, 4)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.record.log_scale["found"] is False
    assert "log_scale_variable" in capsys.readouterr().out


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="configured_scale"):
        IntensityScaleMonitor(configured_scale=-1)
    with pytest.raises(ValueError, match="update_freq"):
        IntensityScaleMonitor(update_freq="sometimes")


def test_after_a_nan_rollback_the_scale_findings_say_only_what_was_measured(make_model, small_data, tmp_path):
    """Keras 3 never trains PtychoPINN's log_scale: it did not come back after a rollback, it never left."""
    from ptycho_callbacks import default_callbacks

    model = make_model(SEED, scaler_style="ptychopinn", learning_rate=1e-2)
    targets = {key: np.array(value) for key, value in small_data.model_targets().items()}
    targets["pred_intensity"][6] = np.nan  # batch 1
    callbacks = default_callbacks(model, str(tmp_path / "run"), verbose=0)
    model.fit(small_data.model_inputs(), targets, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=callbacks)
    record = callbacks[-1].record
    (event,) = record.nan_events
    assert event["weights_restored"] and event["step"] == 2 and event["restored_after_step"] == 1
    scale = [f for f in record.findings if f["code"].startswith("log_scale")]
    assert not any("NaN guard" in f["message"] and "train begin" in f["message"] for f in scale), scale
    tracked = record.log_scale["in_trainable_variables"]
    assert tracked == IS_LEGACY  # tf_keras tracks a plain tf.Variable attribute, Keras 3 does not
    after_restore = [f for f in scale if f["code"] == "log_scale_at_initial_after_restore"]
    if tracked and not record.log_scale["moved"]:
        assert after_restore and "the weights after step 1" in after_restore[0]["message"]
    else:
        assert not after_restore, after_restore
