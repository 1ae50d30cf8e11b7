"""What a careless or unlucky user does costs a warning, never the training or the model."""

import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks import LossComponents, NaNGuard, NonFiniteTrainingError, SummaryReport, default_callbacks
from ptycho_callbacks._keras import keras
from ptycho_callbacks.record import RunRecord

pytestmark = pytest.mark.keras


def _dense_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data(nan_at=None):
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.zeros((16, 1), "float32")
    if nan_at is not None:
        y[nan_at] = np.nan
    return x, y


def test_raising_on_nan_gives_the_model_its_own_step_back_and_never_stacks_guards(tmp_path):
    model = _dense_model()
    x, y = _data(nan_at=9)
    for _ in range(2):
        with pytest.raises(NonFiniteTrainingError):
            model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                      callbacks=[NaNGuard(on_nan="raise", log_dir=tmp_path / "run", verbose=0)])
        assert "train_step" not in vars(model), "the model kept the guard's wrapped step"


def test_the_forensics_folder_follows_the_users_umask(tmp_path):
    model = _dense_model()
    old = os.umask(0o022)
    try:
        model.fit(*_data(nan_at=9), batch_size=4, epochs=1, shuffle=False, verbose=0,
                  callbacks=[NaNGuard(log_dir=tmp_path, verbose=0)])
    finally:
        os.umask(old)
    folder = tmp_path / "nan_forensics"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(folder / "manifest.json").st_mode) == 0o644


class VectorLogging(keras.Model):
    """A custom train step that logs, besides its loss, a vector and a string."""

    def train_step(self, data):
        logs = super().train_step(data)
        return {**logs, "per_output_norms": tf.ones((3,)), "note": "a string"}


def test_a_logged_value_that_is_not_one_number_is_left_out_with_one_warning(tmp_path):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3,))
    model = VectorLogging(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    callbacks = [LossComponents(log_dir=tmp_path), SummaryReport(tmp_path)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(*_data(), batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    assert len(history.history["loss"]) == 2
    record = RunRecord.load(os.path.join(tmp_path, "record.json"))
    assert record.status == "completed" and len(record.history["loss"]) == 2
    assert "per_output_norms" not in record.history and "note" not in record.history
    messages = [str(w.message) for w in caught if "is not one number" in str(w.message)]
    assert len([m for m in messages if "'per_output_norms'" in m and "SummaryReport" in m]) == 1, messages


def test_after_a_nan_an_optimizer_with_moving_averages_leaves_the_last_finite_weights(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True), loss="mse")
    x, y = _data()
    x, y = np.concatenate([x, x]), np.concatenate([y, y])
    y[25] = np.nan  # epoch 0, batch 6 of 8
    guard = NaNGuard(log_dir=tmp_path, verbose=0)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[guard])
    assert guard.record.nan_events[0]["step"] == 7 and guard.record.nan_events[0]["weights_restored"]
    assert all(np.all(np.isfinite(np.asarray(weight))) for weight in model.get_weights()), \
        "Keras wrote the non-finite moving averages over the restored weights"
    finding = next(f for f in guard.record.findings if f["code"] == "weights_restored_after_averaging")
    assert "Restored the weights after step 6, the last finite step again" in finding["message"]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB file system: the run fills it within the first epochs."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_costs_the_logs_not_the_training(full_disk):
    model = _dense_model()
    x = np.random.default_rng(0).normal(size=(2048, 3)).astype("float32")
    callbacks = default_callbacks(model, str(full_disk / "run"), verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, np.zeros((2048, 1), "float32"), batch_size=4, epochs=3, verbose=0,
                            callbacks=callbacks)
    assert len(history.history["loss"]) == 3, "the training stopped"
    lost = [str(w.message) for w in caught if "could not write" in str(w.message)]
    assert any("TensorBoard data" in m and "No space left on device" in m for m in lost), lost
    assert len(lost) == len({m.split(" to ")[0] for m in lost}), f"one warning for each thing lost: {lost}"
    record = callbacks[-1].record
    assert record.status == "completed" and any(f["code"] == "logging_failed" for f in record.findings)
    assert "train_step" not in vars(model)


def test_a_suite_built_inside_the_call_still_closes_when_a_step_raises(tmp_path):
    """`model.fit(..., callbacks=default_callbacks(model, d))`: fit was looked up before the suite wrapped it."""
    model = _dense_model()
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")

    def broken_pipeline():
        for index, sample in enumerate(x):
            if index == 40:  # epoch 0, batch 10: the input pipeline breaks inside the train step
                raise OSError("the data file went away")
            yield sample, np.zeros(1, "float32")

    spec = (tf.TensorSpec((3,), tf.float32), tf.TensorSpec((1,), tf.float32))
    data = tf.data.Dataset.from_generator(broken_pipeline, output_signature=spec).batch(4)
    run = tmp_path / "run"
    with pytest.raises(Exception, match="the data file went away"):
        model.fit(data, epochs=2, verbose=0, callbacks=default_callbacks(model, str(run), verbose=0))
    record = RunRecord.load(run / "record.json")
    assert record.status == "failed" and record.findings[-1]["code"] == "training_failed"
    assert (run / "report.md").exists()
    assert "train_step" not in vars(model), "the model kept the guard's wrapped step"
    assert type(model.train_function).__name__ != "_ReportingFunction", "the model kept the guarded function"


class _RaiseInHook(keras.callbacks.Callback):
    """Another callback of the user's, whose batch hook raises `error` at epoch 0, batch 5."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def on_train_batch_end(self, batch, logs=None):
        if batch == 5:
            raise self.error


def test_a_suite_built_inside_the_call_closes_at_the_next_fit_when_another_callback_raised(tmp_path):
    """Nothing tells our callbacks about an exception from another callback's hook when fit is not wrapped."""
    model = _dense_model()
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = np.zeros((64, 1), "float32")
    first, second = tmp_path / "first", tmp_path / "second"
    with pytest.raises(RuntimeError, match="a user's callback broke"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                  callbacks=default_callbacks(model, str(first), verbose=0)
                  + [_RaiseInHook(RuntimeError("a user's callback broke"))])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=default_callbacks(model, str(second), verbose=0))
    record = RunRecord.load(first / "record.json")
    assert record.status == "failed", record.status
    assert "not told about" in record.findings[-1]["message"] and record.findings[-1]["step"] == 6
    assert (first / "report.md").exists()
    assert RunRecord.load(second / "record.json").status == "completed"
    assert "train_step" not in vars(model) and not vars(model).get("_ptycho_callbacks_open_runs")


def test_a_suite_built_inside_the_call_closes_at_exit_after_ctrl_c_in_another_callback(tmp_path):
    script = f"""
import numpy as np
from ptycho_callbacks import default_callbacks
from ptycho_callbacks._keras import keras

class CtrlC(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 5:
            raise KeyboardInterrupt

inputs = keras.Input((3,))
model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
model.compile(optimizer="sgd", loss="mse")
x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
model.fit(x, np.zeros((64, 1), "float32"), batch_size=4, epochs=2, verbose=0,
          callbacks=default_callbacks(model, {str(tmp_path / 'run')!r}, verbose=0) + [CtrlC()])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "KeyboardInterrupt" in done.stderr and done.returncode != 0, done.stderr[-2000:]
    record = RunRecord.load(tmp_path / "run" / "record.json")
    assert record.status == "interrupted", (record.status, done.stderr[-2000:])
    assert record.findings[-1]["code"] == "training_interrupted" and record.findings[-1]["step"] == 6
    assert (tmp_path / "run" / "report.md").exists()
