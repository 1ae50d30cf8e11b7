"""The run object: one owner of the shared state, closed by the last callback, whatever the order."""

import itertools
import json
import os
import re

import numpy as np
import pytest

from ptycho_callbacks import Probe, Run, default_callbacks
from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.intensity_scale_monitor import IntensityScaleMonitor
from ptycho_callbacks.callbacks.loss_components import LossComponents
from ptycho_callbacks.callbacks.summary_report import SummaryReport

import tensorboard_events

pytestmark = pytest.mark.keras

PROBE = 4
SEED = 11


def _suite_and_keras(model, data, run_dir, tmp_path):
    inputs = {key: value[:PROBE] for key, value in data.model_inputs().items()}
    stages = [dict(name="container_X", array=data.container_X),
              dict(name="prediction", layer="pred_amplitude"),
              dict(name="truth", array=data.truth_diffraction[:PROBE])]
    ours = default_callbacks(model, run_dir, scenario="ordered", config={"nphotons": data.nphotons, "N": data.N},
                             stages=stages,
                             probe=Probe(inputs, truth=data.truth_object[:PROBE],
                                         counts=data.model_targets()["pred_intensity"][:PROBE]), verbose=0)
    theirs = [keras.callbacks.ModelCheckpoint(str(tmp_path / f"{os.path.basename(run_dir)}.weights.h5"),
                                              save_weights_only=True),
              keras.callbacks.EarlyStopping(monitor="loss", patience=10),
              keras.callbacks.TensorBoard(log_dir=run_dir)]
    return ours, theirs


def _without_times(record):
    record = dict(record)
    for key in ("started_at", "ended_at", "base_dir"):
        record.pop(key)
    return record


def _report_sections(run_dir):
    """The report's lines with its timestamps (generated, started, ended) and its directory taken out."""
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as handle:
        text = handle.read().replace(run_dir, "<run>")
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "<time>", text).splitlines()


ORDERS = {
    "as built": lambda ours, theirs: ours + theirs,
    "reversed": lambda ours, theirs: list(reversed(ours + theirs)),
    "report first": lambda ours, theirs: [ours[-1]] + theirs + ours[:-1],
    "interleaved": lambda ours, theirs: [c for pair in itertools.zip_longest(theirs, ours[::-1]) for c in pair if c],
}


def test_the_order_of_the_callbacks_never_changes_the_record_or_the_report(make_model, small_data, tmp_path):
    outcomes = {}
    for name, order in ORDERS.items():
        model = make_model(SEED)
        run_dir = str(tmp_path / name.replace(" ", "_"))
        ours, theirs = _suite_and_keras(model, small_data, run_dir, tmp_path)
        model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=2, shuffle=False,
                  verbose=0, callbacks=order(ours, theirs))
        with open(os.path.join(run_dir, "record.json"), encoding="utf-8") as handle:
            record = json.load(handle)
        outcomes[name] = (_without_times(record), _report_sections(run_dir))
    first_record, first_report = outcomes["as built"]
    assert first_record["status"] == "completed" and first_record["stages"] and first_record["physics"]
    assert first_record["log_scale"]["found"] and first_record["batch_history"]["loss"]
    for name, (record, report) in outcomes.items():
        assert record == first_record, f"order {name!r} changed the record"
        assert report == first_report, f"order {name!r} changed the report"


def test_the_run_closes_when_the_last_of_its_callbacks_ends(make_model, small_data, tmp_path):
    run = Run(tmp_path / "run", scenario="closing")
    monitor, components, report = IntensityScaleMonitor(run=run, verbose=0), LossComponents(run=run), \
        SummaryReport(run=run)
    model = make_model(SEED)
    for callback in (report, monitor, components):
        callback.set_model(model)
    for callback in (report, monitor, components):
        callback.on_train_begin()
    assert run.is_open and run.record.status == "running"
    report.on_train_end()
    monitor.on_train_end()
    assert run.is_open and not os.path.exists(tmp_path / "run" / "report.md"), "closed before the last member"
    components.on_train_end()
    assert not run.is_open and run.record.status == "completed"
    assert os.path.exists(tmp_path / "run" / "report.md")
    assert "report/summary" in tensorboard_events.texts(str(tmp_path / "run"))


def test_callbacks_alone_on_one_directory_share_one_run_and_one_event_file(make_model, small_data, tmp_path):
    run_dir = str(tmp_path / "alone")
    model = make_model(SEED)
    callbacks = [LossComponents(log_dir=run_dir), IntensityScaleMonitor(log_dir=run_dir, verbose=0),
                 SummaryReport(run_dir)]
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=1, verbose=0,
              callbacks=callbacks)
    assert len({id(callback.run) for callback in callbacks}) == 1
    assert len(os.listdir(os.path.join(run_dir, "ptycho", "train"))) == 1
    tags = tensorboard_events.scalars(run_dir)
    assert {"loss/batch/loss", "scale/batch/log_scale"} <= set(tags)
    with open(os.path.join(run_dir, "record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["batch_history"]["loss"] and record["log_scale"]["found"], "one record holds both callbacks' data"


def test_a_run_and_a_log_dir_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="run or log_dir"):
        LossComponents(run=Run(), log_dir=tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"NaNGuard": {"on_nan": "raise"}, "Nope": {}}, r"no callback named \['Nope'\]"),
    ({"LossComponents": {"update_frequency": 2}}, "LossComponents takes no argument 'update_frequency'"),
    ({"StageStatistics": {"truth": np.ones(2)}}, "the suite sets 'truth' from its 'probe' parameter"),
    ({"SummaryReport": "title"}, "must be a dict"),
])
def test_options_that_reach_no_argument_are_refused(make_model, small_data, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        default_callbacks(make_model(SEED), str(tmp_path / "run"), options=options)


def test_options_reach_every_callback_of_the_suite(make_model, small_data, tmp_path):
    inputs = {key: value[:PROBE] for key, value in small_data.model_inputs().items()}
    probe = Probe(inputs, truth=small_data.truth_object[:PROBE],
                  counts=small_data.model_targets()["pred_intensity"][:PROBE])
    suite = default_callbacks(make_model(SEED), str(tmp_path / "run"), probe=probe, verbose=0, options={
        "NaNGuard": {"on_nan": "raise", "restore_weights": False},
        "IntensityScaleMonitor": {"drift_tolerance": 0.5},
        "LossComponents": {"update_freq": 3},
        "StageStatistics": {"every_n_epochs": 4},
        "PhysicsHealth": {"every_n_epochs": 2},
        "SummaryReport": {"title": "Sweep"},
    })
    by_name = {type(callback).__name__: callback for callback in suite}
    assert (by_name["NaNGuard"].on_nan, by_name["NaNGuard"].restore_weights) == ("raise", False)
    assert by_name["IntensityScaleMonitor"].drift_tolerance == 0.5
    assert by_name["LossComponents"].update_freq == 3
    assert by_name["StageStatistics"].every_n_epochs == 4 and by_name["PhysicsHealth"].every_n_epochs == 2
    assert by_name["SummaryReport"].title == "Sweep"
    with pytest.raises(ValueError, match="Probe"):
        default_callbacks(make_model(SEED), str(tmp_path / "other"), probe=inputs)


def test_the_record_keeps_the_loss_weights_the_model_weighs_with(make_model, small_data, tmp_path):
    """PtychoPINN's params.cfg may hold other weights than the compiled model (changed after compile)."""
    model = make_model(0, loss_weights=(0.0, 1.0, 1.0))
    config = {"loss_weights": {"pred_intensity_loss": 2.0, "intensity_scaler_inv_loss": 1.0}}
    callbacks = default_callbacks(model, str(tmp_path / "run"), config=config, verbose=0)
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=1, verbose=0,
              callbacks=callbacks)
    record = callbacks[-1].record
    assert record.config["loss_weights"]["pred_intensity_loss"] == 1.0
    assert record.config["configured_loss_weights"]["pred_intensity_loss"] == 2.0
    (finding,) = [f for f in record.findings if f["code"] == "loss_weights_differ"]
    assert "pred_intensity_loss 2.0 in the config, 1 in the model" in finding["message"]


@pytest.mark.parametrize("order", ["as built", "reversed"])
def test_per_batch_points_reach_tensorboard_during_a_long_epoch(make_model, small_data, tmp_path, order):
    """The batch hooks only note; the notes are written every 64 batches, not held until the epoch ends, and a
    step noted by several callbacks (the guard last, here reversed) is one point, also at a block's edge."""
    import tensorflow as tf

    seen = {}

    class ReadBack(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 69:  # step 70, six steps after the 64th note
                seen.update(tensorboard_events.scalars(str(tmp_path / "run")))

    model = make_model(SEED)
    data = tf.data.Dataset.from_tensor_slices((small_data.model_inputs(), small_data.model_targets()))
    ours = default_callbacks(model, str(tmp_path / "run"), verbose=0)
    ordered = ours if order == "as built" else ours[::-1]
    model.fit(data.repeat().batch(4), steps_per_epoch=80, epochs=1, verbose=0, callbacks=ordered + [ReadBack()])
    ours[0].run.wait()
    steps = [step for step, _ in seen["loss/batch/loss"]]
    assert steps == list(range(1, 65)), steps  # written, and on disk, at the 64th
    assert [step for step, _ in seen["scale/batch/log_scale"]] == list(range(1, 65))
    final = tensorboard_events.scalars(str(tmp_path / "run"))
    for tag in ("loss/batch/loss", "scale/batch/log_scale"):
        assert [step for step, _ in final[tag]] == list(range(1, 81)), tag
