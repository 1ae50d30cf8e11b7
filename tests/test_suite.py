"""The suite as users attach it: alone, with nothing but a model, next to Keras's own callbacks."""

import os

import numpy as np
import pytest

from ptycho_callbacks import (IntensityScaleMonitor, LossComponents, NaNGuard, StageStatistics,
                              SummaryReport, default_callbacks)
from ptycho_callbacks._keras import keras
from ptycho_callbacks.record import RunRecord

import tensorboard_events

pytestmark = pytest.mark.keras

SEED = 5
"""Keras's random seed before each stand-in model (`make_model`) is built."""


def test_default_callbacks_with_nothing_but_a_model(make_model, small_data, tmp_path):
    model = make_model(SEED)
    run = str(tmp_path / "plain")
    suite = default_callbacks(model, run, verbose=0)
    assert [type(c).__name__ for c in suite] == ["NaNGuard", "IntensityScaleMonitor", "LossComponents",
                                                 "SummaryReport"]
    assert len({id(c.record) for c in suite}) == 1
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=2, verbose=0,
              callbacks=suite)
    record = RunRecord.load(os.path.join(run, "record.json"))
    assert record.status == "completed" and record.log_scale["found"]
    assert set(record.batch_history) >= {"loss", "pred_intensity_loss"}
    assert os.path.exists(os.path.join(run, "report.md"))
    tags = tensorboard_events.scalars(run)
    assert "scale/epoch/log_scale" in tags and "loss/batch/loss" in tags


def test_next_to_keras_own_callbacks(make_model, small_data, tmp_path):
    model = make_model(SEED)
    run = str(tmp_path / "mixed")
    ours = [NaNGuard(log_dir=run, verbose=0), IntensityScaleMonitor(log_dir=run, verbose=0),
            LossComponents(log_dir=run),
            StageStatistics([dict(name="container_X", array=small_data.container_X)], log_dir=run),
            SummaryReport(run)]
    theirs = [keras.callbacks.TensorBoard(log_dir=run),
              keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), save_best_only=True,
                                              save_weights_only=True),
              keras.callbacks.ReduceLROnPlateau(patience=1, factor=0.5),
              keras.callbacks.EarlyStopping(patience=5)]
    history = model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=3,
                        verbose=0, validation_split=0.25, callbacks=ours + theirs)
    assert len(history.history["loss"]) == 3
    assert os.path.exists(tmp_path / "best.weights.h5")
    assert os.path.isdir(os.path.join(run, "train")) and os.path.isdir(os.path.join(run, "ptycho", "train"))
    record = RunRecord.load(os.path.join(run, "record.json"))
    np.testing.assert_allclose(record.history["val_loss"], history.history["val_loss"], rtol=1e-6)
    assert {callback.log_dir for callback in ours} == {run}
    assert len({id(callback.record) for callback in ours}) == 1, "callbacks alone on one directory share one run"


def test_single_output_model_logs_the_total_only(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    components = LossComponents(log_dir=str(tmp_path))
    x, y = np.random.default_rng(0).normal(size=(8, 3)).astype("float32"), np.zeros((8, 1), "float32")
    kernel, bias = (np.asarray(w) for w in model.get_layer(index=1).weights)
    first_batch_loss = float(np.mean((x[:4] @ kernel + bias) ** 2))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[components])
    assert components.record.config["loss_weights"] == {}
    assert set(components.record.batch_history) == {"loss"}
    assert len(components.record.batch_history["loss"]) == 2
    assert components.record.batch_history["loss"][0] == pytest.approx(first_batch_loss, rel=1e-5)


def test_a_directory_holding_a_run_gets_a_new_run_alongside(make_model, small_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    for _ in range(2):
        model = make_model(SEED)
        model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=1, verbose=0,
                  callbacks=default_callbacks(model, run, verbose=1))
    first, second = (RunRecord.load(os.path.join(path, "record.json")) for path in (run, run + "-2"))
    assert first.started_at < second.started_at, "the first run was overwritten"
    assert os.path.exists(os.path.join(run + "-2", "report.md"))
    assert f"this run writes to {run}-2" in capsys.readouterr().out

    model = make_model(SEED)
    suite = default_callbacks(model, run, verbose=0, overwrite=True)
    assert {callback.log_dir for callback in suite} == {run}
