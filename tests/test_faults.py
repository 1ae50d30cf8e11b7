"""The fault matrix: whatever ends a training, the run directory tells what happened up to there.

Every case trains the stand-in model with the whole suite (`default_callbacks`)
and then reads back what is on disk: `record.json` (loaded with the schema's
own loader), `report.md`, and that no temporary file is left half-written.
The model is built once and reset between cases, so Keras traces once.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks import default_callbacks
from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.scale_discovery import find_log_scale
from ptycho_callbacks.record import RunRecord

from model_state import optimizer_variables, watched_variables

pytestmark = pytest.mark.keras

BATCH = 4  # 16 samples: 4 batches per epoch, sample 4*k lands in batch k (shuffle=False)


@pytest.fixture(scope="module")
def pool():
    return {}


@pytest.fixture
def model(pool, make_model):
    """The stand-in at its initial weights and learning rate, optimizer state zeroed."""
    if "model" not in pool:
        made = make_model(2)
        pool["model"] = (made, [np.array(v.numpy()) for v in watched_variables(made)],
                         float(np.asarray(made.optimizer.learning_rate)))
    made, initial, learning_rate = pool["model"]
    for variable, value in zip(watched_variables(made), initial):
        variable.assign(value)
    for variable in optimizer_variables(made):
        if "learning_rate" not in variable.name:
            variable.assign(tf.zeros_like(variable))
    made.optimizer.learning_rate.assign(learning_rate)
    return made


def _targets(data, output=None, batch=0, value=np.nan):
    targets = {name: np.array(array, copy=True) for name, array in data.model_targets().items()}
    if output is not None:
        targets[output][batch * BATCH] = value
    return targets


class At(keras.callbacks.Callback):
    """Calls `action(model)` after training batch `batch` of `epoch`."""

    def __init__(self, epoch, batch, action):
        super().__init__()
        self.where, self.action, self.epoch = (epoch, batch), action, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.where:
            self.action(self.model)


def _fill(variable, value):
    variable.assign(tf.fill(tf.shape(variable), tf.constant(value, variable.dtype)))


def _raise(error):
    def action(model):
        raise error
    return action


def _run(model, data, run_dir, targets=None, extra=(), epochs=3, validation=None, **suite_args):
    callbacks = list(extra) + default_callbacks(model, run_dir, verbose=0, **suite_args)
    return model.fit(data.model_inputs(), targets if targets is not None else data.model_targets(),
                     batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks,
                     validation_data=validation)


def _read_back(run_dir):
    """The record and report on disk; fails if either is missing or a temporary file is left."""
    leftovers = [name for name in os.listdir(run_dir) if name.startswith(".") or name.endswith(".tmp")]
    assert not leftovers, f"half-written files left: {leftovers}"
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as handle:
        report = handle.read()
    assert report.startswith("#") and record.scenario in report
    assert record.ended_at is not None
    return record, report


@pytest.mark.parametrize("output, batch, value", [
    ("pred_intensity", 2, np.nan),
    ("intensity_scaler_inv", 1, np.nan),
    ("trimmed_obj", 3, complex(np.nan, 0.0)),
    ("intensity_scaler_inv", 1, np.inf),
    ("intensity_scaler_inv", 2, -np.inf),
    ("pred_intensity", 0, np.nan),  # the very first batch
])
def test_non_finite_loss_component(model, small_data, tmp_path, output, batch, value):
    run_dir = str(tmp_path / "run")
    _run(model, small_data, run_dir, _targets(small_data, output, batch, value))

    record, report = _read_back(run_dir)
    assert record.status == "stopped_nan"
    (event,) = record.nan_events
    assert (event["epoch"], event["batch"], event["step"]) == (0, batch, batch + 1)
    assert event["components"][0] == f"{output}_loss"
    assert f"{output}_loss" in report and "NaN Event" in report
    assert len(record.history.get("loss", [])) == 1  # Keras still ends the epoch it stopped in
    assert all(np.all(np.isfinite(v.numpy())) for v in watched_variables(model)), "the suite restores finite weights"


def test_nan_in_log_scale(model, small_data, tmp_path):
    run_dir = str(tmp_path / "run")
    log_scale, _, _ = find_log_scale(model)
    _run(model, small_data, run_dir, extra=[At(1, 1, lambda m: _fill(log_scale, np.nan))])

    record, report = _read_back(run_dir)
    (event,) = record.nan_events
    # Assigned between steps, after batch (1, 1): the check at the end of the next step finds it.
    assert (event["epoch"], event["batch"]) == (1, 2) and "log_scale" in event["components"]
    assert math.isnan(event["values"]["log_scale"]) and math.isfinite(event["last_finite"]["log_scale"])
    assert math.isfinite(float(log_scale.numpy()))
    assert "log_scale" in report


def test_nan_in_a_weight(model, small_data, tmp_path):
    run_dir = str(tmp_path / "run")
    kernel = model.get_layer("enc2").kernel
    _run(model, small_data, run_dir, extra=[At(0, 2, lambda m: _fill(kernel, np.nan))])

    record, _ = _read_back(run_dir)
    (event,) = record.nan_events
    # Assigned between steps: the next step ran on it and spread it, and its check found it.
    assert (event["epoch"], event["batch"]) == (0, 3) and "weights" in event["components"]
    assert any("enc2" in name for name in event["nonfinite_weights"])
    assert all(np.all(np.isfinite(v.numpy())) for v in watched_variables(model)), "the suite restores finite weights"


def test_non_finite_in_validation_only(model, small_data, tmp_path):
    run_dir = str(tmp_path / "run")
    validation = (small_data.model_inputs(), _targets(small_data, "pred_intensity", 1))
    _run(model, small_data, run_dir, validation=validation)

    record, report = _read_back(run_dir)
    (event,) = record.nan_events
    assert event["phase"] == "val" and event["components"][0] == "val_pred_intensity_loss"
    assert len(record.history["loss"]) == 1  # stopped at the end of the first epoch
    assert all(math.isfinite(v) for v in record.history["loss"])


@pytest.mark.parametrize("error, status", [(RuntimeError("user code broke"), "failed"),
                                           (KeyboardInterrupt(), "interrupted")])
def test_exception_mid_epoch_leaves_a_complete_record(model, small_data, tmp_path, error, status):
    run_dir = str(tmp_path / "run")
    with pytest.raises(type(error)):
        _run(model, small_data, run_dir, extra=[At(1, 2, _raise(error))])

    record, report = _read_back(run_dir)
    assert record.status == status
    assert len(record.history["loss"]) == 1, "the finished epoch is in the record"
    # The error came from a callback before ours in step 7's hook: our last batch is step 6.
    assert record.batch_steps[-1] == 6, "the batches of the interrupted epoch are in the record"
    (finding,) = [f for f in record.findings if f["code"] == f"training_{status}"]
    assert "in epoch 1 (index from 0) with 7 optimizer steps done" in finding["message"]
    assert type(error).__name__ in finding["message"]
    assert status in report
    # The guard gave the model its own train step back, and a new fit runs as usual.
    assert "train_step" not in vars(model)
    again = str(tmp_path / "again")
    _run(model, small_data, again, epochs=1)
    assert RunRecord.load(os.path.join(again, "record.json")).status == "completed"


def _saved_arrays(path):
    """Every model array of a weights file (.h5) or of the newest TF checkpoint under a directory.

    The optimizer's entries are left out: Keras 3 saves them beside the weights, and the
    learning rate these tests set is NaN on purpose.
    """
    if path.endswith(".h5"):
        import h5py

        arrays = []

        def collect(name, item):
            if isinstance(item, h5py.Dataset) and "optimizer" not in name:
                arrays.append(item[()])

        with h5py.File(path, "r") as handle:
            handle.visititems(collect)
        return arrays
    h5_files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                if name.endswith(".h5")]
    if h5_files:
        return [array for file in h5_files for array in _saved_arrays(file)]
    (directory,) = [root for root, _, names in os.walk(path) if "checkpoint" in names]  # tf_keras: backup/chief
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    return [reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if "optimizer" not in name]


def _nan_learning_rate_from(epoch):
    """A NaN learning rate from `epoch` on: the update of that epoch's first step makes every weight NaN."""
    return keras.callbacks.LearningRateScheduler(lambda e, lr: float("nan") if e >= epoch else float(lr))


@pytest.mark.parametrize("ours_first", [True, False])
@pytest.mark.parametrize("nan_epoch", [0, 1])
def test_keras_savers_never_keep_non_finite_weights(model, small_data, tmp_path, ours_first, nan_epoch):
    """ModelCheckpoint, BackupAndRestore and EarlyStopping see only finite weights, before or after our suite."""
    best = str(tmp_path / "best.weights.h5")
    every = str(tmp_path / "epoch{epoch}.weights.h5")
    backup = str(tmp_path / "backup")
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    theirs = [_nan_learning_rate_from(nan_epoch),
              keras.callbacks.ModelCheckpoint(best, monitor="loss", save_best_only=True, save_weights_only=True),
              keras.callbacks.ModelCheckpoint(every, save_weights_only=True),
              keras.callbacks.BackupAndRestore(backup, save_freq=1, delete_checkpoint=False),
              stopper]
    run_dir = str(tmp_path / "run")
    suite = default_callbacks(model, run_dir, verbose=0)
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=BATCH, epochs=3,
              shuffle=False, verbose=0, callbacks=suite + theirs if ours_first else theirs + suite)

    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    (event,) = record.nan_events
    assert (event["epoch"], event["batch"]) == (nan_epoch, 0) and event["weights_restored"]
    saved = [os.path.join(tmp_path, name) for name in os.listdir(tmp_path) if name.endswith(".h5")]
    assert len(saved) >= nan_epoch + 1, saved  # each epoch's file and the best one after a finite epoch
    if os.path.exists(backup):  # tf_keras writes no backup when the first epoch stops early
        saved.append(backup)
    for path in saved:
        arrays = [a for a in _saved_arrays(path) if np.issubdtype(np.asarray(a).dtype, np.floating)]
        assert arrays and all(np.all(np.isfinite(a)) for a in arrays), f"non-finite weights saved in {path}"
    assert all(np.all(np.isfinite(v.numpy())) for v in watched_variables(model))
