"""NaNGuard: stops at the exact batch where a loss, log_scale or weight goes non-finite.

The stand-in model has 16 samples; with batch size 4 and shuffle=False an
epoch has 4 batches, and a NaN put into sample 4*k of a target array shows at
batch k. Models are built once per module and reset between tests (weights
and optimizer state), so Keras traces each training function once.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.batch_values import BatchValues
from ptycho_callbacks.callbacks.scale_discovery import find_log_scale
from ptycho_callbacks.nan.guard import NaNGuard, NonFiniteTrainingError
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.run import Run

import tensorboard_events
from model_state import optimizer_variables, watched_variables

pytestmark = pytest.mark.keras

BATCH = 4
BATCHES_PER_EPOCH = 4  # 16 samples


def _name(variable):
    name = getattr(variable, "path", None) or variable.name
    return name[:-2] if name.endswith(":0") else name


@pytest.fixture(scope="module")
def model_pool(small_data):
    return {}


@pytest.fixture
def fresh_model(model_pool, make_model):
    """fresh_model(style) -> a compiled model at its initial weights with a zeroed optimizer."""

    def make(style="keras"):
        if style not in model_pool:
            model = make_model(scaler_style=style)
            model_pool[style] = (model, [np.array(v.numpy()) for v in watched_variables(model)])
        model, initial = model_pool[style]
        for variable, value in zip(watched_variables(model), initial):
            variable.assign(value)
        for variable in optimizer_variables(model):
            if "learning_rate" not in variable.name:
                variable.assign(tf.zeros_like(variable))
        return model

    return make


def _targets(data, output=None, batch=0, value=np.nan, pixel=None):
    """Training targets with `value` in the first sample of `batch` of `output`."""
    targets = {name: np.array(array, copy=True) for name, array in data.model_targets().items()}
    if output is not None:
        sample = batch * BATCH
        if pixel is None:
            targets[output][sample] = value
        else:
            targets[output][(sample,) + tuple(pixel)] = value
    return targets


def _fit(model, data, callbacks, targets=None, epochs=2, **kwargs):
    return model.fit(data.model_inputs(), targets if targets is not None else data.model_targets(),
                     batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **kwargs)


class Counter(keras.callbacks.Callback):
    """Counts the training batches run; optionally copies every variable after each batch."""

    def __init__(self, keep_weights=False):
        super().__init__()
        self.keep_weights = keep_weights
        self.batches = []
        self.losses = []  # the running mean Keras logs: non-finite from the first non-finite batch on
        self.weights = {}
        self.epochs_ended = 0
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_ended += 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((self.epoch, batch))
        self.losses.append(float(logs["loss"]))
        if self.keep_weights:
            self.weights[(self.epoch, batch)] = [np.array(v.numpy()) for v in watched_variables(self.model)]


class AssignAt(keras.callbacks.Callback):
    """Assigns `value` to the variable `pick(model)` after training batch `batch` of `epoch`."""

    def __init__(self, epoch, batch, pick, value):
        super().__init__()
        self.target = (epoch, batch)
        self.pick = pick
        self.value = value
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.target:
            variable = self.pick(self.model)
            variable.assign(tf.fill(tf.shape(variable), tf.constant(self.value, variable.dtype)))


def _only_event(guard):
    assert len(guard.record.nan_events) == 1, guard.record.nan_events
    assert guard.record.status == "stopped_nan"
    return guard.record.nan_events[0]


def _bright_pixel(data, sample):
    target = data.model_targets()["pred_intensity"][sample]
    return np.unravel_index(np.argmax(target), target.shape)


LOSS_NAMES = ["trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss", "loss", "log_scale"]


@pytest.mark.parametrize("output, batch, value, expected", [
    ("trimmed_obj", 2, complex(np.nan, 0.0), "nan"),
    ("intensity_scaler_inv", 1, np.nan, "nan"),
    ("pred_intensity", 3, np.nan, "nan"),
    ("intensity_scaler_inv", 2, np.inf, "+inf"),
    ("pred_intensity", 1, np.inf, "-inf"),  # +Inf count at a bright pixel: NLL = exp(l) - inf * l = -Inf
])
def test_stops_at_the_batch_where_a_component_goes_non_finite(fresh_model, small_data, output, batch,
                                                             value, expected, capsys):
    model = fresh_model()
    pixel = _bright_pixel(small_data, batch * BATCH) if expected == "-inf" else None
    counter, guard = Counter(), NaNGuard(restore_weights=False)
    _fit(model, small_data, [counter, guard], _targets(small_data, output, batch, value, pixel))

    component = f"{output}_loss"
    assert counter.batches == [(0, b) for b in range(batch + 1)], "training went on after the NaN batch"
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"], event["phase"]) == (0, batch, batch + 1, "train")
    assert event["components"][0] == component
    assert "loss" in event["components"]
    assert event["components"].index("loss") > event["components"].index(component)
    got = event["values"][component]
    if expected == "nan":
        assert math.isnan(got)
    else:
        assert got == (math.inf if expected == "+inf" else -math.inf)
    assert set(event["last_finite"]) == set(LOSS_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in event["last_finite"].values())
    assert event["weights_restored"] is False
    assert model.stop_training is True

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NaNGuard:")]
    assert len(lines) == 1
    assert f"{component} became {'NaN' if expected == 'nan' else expected.replace('inf', 'Inf')}" in lines[0]
    assert f"epoch 0, batch {batch} (indices from 0; step {batch + 1} = train steps done, this one included)" in lines[0]
    assert "Training stopped." in lines[0]


def test_last_finite_values_are_per_batch_values_not_running_means(fresh_model, small_data):
    model = fresh_model()
    means, read = {}, {}

    class Logs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.values = None

        def on_train_batch_end(self, batch, logs=None):
            means[batch] = dict(logs)
            if self.values is None:
                self.values = BatchValues(self.model)
            read[batch] = self.values.read()

    guard = NaNGuard(verbose=0)
    _fit(model, small_data, [Logs(), guard], _targets(small_data, "pred_intensity", 2))
    last = _only_event(guard)["last_finite"]
    # The guard reads the values the package's BatchValues reads.
    assert last["pred_intensity_loss"] == read[1]["pred_intensity_loss"]
    assert last["intensity_scaler_inv_loss"] == read[2]["intensity_scaler_inv_loss"]
    # Equal batches: the value of batch k is (k+1) * mean_k - k * mean_(k-1).
    assert last["pred_intensity_loss"] == pytest.approx(
        2 * means[1]["pred_intensity_loss"] - means[0]["pred_intensity_loss"], rel=1e-4)
    assert last["pred_intensity_loss"] != pytest.approx(means[1]["pred_intensity_loss"], rel=1e-6)
    # The MAE stayed finite at batch 2: its last finite value is batch 2's own.
    assert last["intensity_scaler_inv_loss"] == pytest.approx(
        3 * means[2]["intensity_scaler_inv_loss"] - 2 * means[1]["intensity_scaler_inv_loss"], rel=1e-4)


def test_nan_at_the_very_first_batch_restores_initial_weights(fresh_model, small_data, capsys):
    model = fresh_model()
    initial = [np.array(v.numpy()) for v in watched_variables(model)]
    counter, guard = Counter(keep_weights=True), NaNGuard(restore_weights=True)
    _fit(model, small_data, [counter, guard], _targets(small_data, "pred_intensity", 0))

    assert counter.batches == [(0, 0)]
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"]) == (0, 0, 1)
    assert event["components"][0] == "pred_intensity_loss"
    # No finite value before; the MAE, still finite at batch 0, keeps batch 0's value.
    assert all(event["last_finite"][name] is None for name in event["components"] if name != "weights")
    assert math.isfinite(event["last_finite"]["intensity_scaler_inv_loss"])
    assert event["weights_restored"] is True
    assert event["nonfinite_weights"], "the NaN did not reach the weights"
    # The step put the weights back itself: the callback before the guard never saw them non-finite.
    assert all(np.all(np.isfinite(w)) for w in counter.weights[(0, 0)])
    for restored, expected in zip(watched_variables(model), initial):
        np.testing.assert_array_equal(restored.numpy(), expected)
    out = capsys.readouterr().out
    assert "weights of train begin" in out
    assert "optimizer's state is non-finite" in out


@pytest.mark.parametrize("style", ["keras", "ptychopinn"])
def test_restored_weights_are_those_after_the_last_finite_batch(fresh_model, small_data, style):
    model = fresh_model(style)
    counter, guard = Counter(keep_weights=True), NaNGuard(restore_weights=True, verbose=0)
    _fit(model, small_data, [counter, guard], _targets(small_data, "pred_intensity", 2))

    event = _only_event(guard)
    assert (event["batch"], event["weights_restored"]) == (2, True)
    assert counter.batches[-1] == (0, 2)
    assert event["nonfinite_weights"], "the NaN did not reach the weights"
    assert all(np.all(np.isfinite(w)) for w in counter.weights[(0, 2)])
    restored = [np.array(v.numpy()) for v in watched_variables(model)]
    assert all(np.all(np.isfinite(w)) for w in restored)
    for got, expected in zip(restored, counter.weights[(0, 1)]):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("style", ["keras", "ptychopinn"])
def test_nan_in_log_scale(fresh_model, small_data, style):
    model = fresh_model(style)
    log_scale, _, _ = find_log_scale(model)
    counter, guard = Counter(), NaNGuard(verbose=0)
    _fit(model, small_data, [counter, AssignAt(1, 1, lambda m: log_scale, np.nan), guard], epochs=3)

    # Assigned between steps, after batch (1, 1): the check at the end of the next step finds it.
    assert counter.batches[-1] == (1, 2) and len(counter.batches) == BATCHES_PER_EPOCH + 3
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"]) == (1, 2, BATCHES_PER_EPOCH + 3)
    assert "log_scale" in event["components"]
    assert math.isnan(event["values"]["log_scale"])
    assert math.isfinite(event["last_finite"]["log_scale"])
    # PtychoPINN's log_scale is an unnamed tf.Variable ("Variable"): the event names it by where it is held.
    # The step that ran on it spread the NaN to the other weights too.
    assert ("intensity_scaler.w" if style == "ptychopinn" else _name(log_scale)) in event["nonfinite_weights"]


def test_zero_predicted_intensity_makes_the_poisson_nll_non_finite(fresh_model, small_data):
    """The way PtychoPINN goes NaN: a dead amplitude head predicts intensity 0 and the NLL takes log(0)."""
    model = fresh_model()
    bias = model.get_layer("amp_head").bias
    counter, guard = Counter(), NaNGuard(verbose=0)
    _fit(model, small_data, [counter, AssignAt(0, 1, lambda m: bias, -200.0), guard])  # sigmoid(-200) == 0

    event = _only_event(guard)
    assert (event["batch"], event["step"]) == (2, 3)
    assert counter.batches[-1] == (0, 2)
    assert event["components"][0] == "pred_intensity_loss"
    assert "intensity_scaler_inv_loss" not in event["components"]
    assert not math.isfinite(event["values"]["pred_intensity_loss"])


def test_nan_in_a_weight_is_named_and_restored(fresh_model, small_data):
    model = fresh_model()
    kernel = model.get_layer("enc2").kernel
    counter, guard = Counter(keep_weights=True), NaNGuard(restore_weights=True, verbose=0)
    injector = AssignAt(1, 2, lambda m: kernel, np.nan)
    _fit(model, small_data, [counter, injector, guard], epochs=3)

    # Assigned between steps, after step 7: the check at the end of step 8 finds it.
    assert len(counter.batches) == BATCHES_PER_EPOCH + 4
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"]) == (1, 3, BATCHES_PER_EPOCH + 4)
    assert "weights" in event["components"]
    assert _name(kernel) in event["nonfinite_weights"]
    assert math.isnan(event["values"]["weights"])
    assert event["weights_restored"] is True and event["restored_after_step"] == BATCHES_PER_EPOCH + 3
    # The snapshot, taken at the end of each step where everything was finite, holds the weights after
    # step 7, before the callback's NaN.
    for got, expected in zip(watched_variables(model), counter.weights[(1, 2)]):
        np.testing.assert_array_equal(got.numpy(), expected)


def test_inf_weight_ignored_without_check_weights(fresh_model, small_data):
    model = fresh_model()
    kernel = model.get_layer("enc2").kernel
    counter, guard = Counter(), NaNGuard(check_weights=False, verbose=0)
    _fit(model, small_data, [counter, AssignAt(0, 1, lambda m: kernel, np.inf), guard])
    # Only the loss shows it: at the next batch where the platform's kernels turn the Inf activations
    # non-finite, one batch later where they stay finite and the step's NaN gradients reach every weight.
    event = _only_event(guard)
    first_bad_loss = next(batch for (_, batch), loss in zip(counter.batches, counter.losses) if not math.isfinite(loss))
    assert first_bad_loss in (2, 3)
    assert event["batch"] == first_bad_loss and counter.batches[-1] == (0, first_bad_loss)
    assert "weights" not in event["components"]
    assert all(math.isfinite(value) for value in event["last_finite"].values()), event["last_finite"]


def test_a_guard_of_the_losses_alone_reads_no_weight(fresh_model, small_data):
    model = fresh_model()
    counter, guard = Counter(), NaNGuard(check_weights=False, restore_weights=False, verbose=0)
    _fit(model, small_data, [counter, guard], _targets(small_data, "intensity_scaler_inv", 1))
    event = _only_event(guard)
    assert (event["batch"], event["step"]) == (1, 2) and counter.batches[-1] == (0, 1)
    assert event["components"][0] == "intensity_scaler_inv_loss" and "weights" not in event["components"]
    assert guard._step_guard.shadows is None and guard._train_check is None


def test_raise_on_request(fresh_model, small_data, tmp_path):
    model = fresh_model()
    counter, guard = Counter(), NaNGuard(on_nan="raise", log_dir=tmp_path, verbose=0)
    with pytest.raises(NonFiniteTrainingError) as caught:
        _fit(model, small_data, [counter, guard], _targets(small_data, "intensity_scaler_inv", 1))
    assert isinstance(caught.value, RuntimeError)
    assert counter.batches == [(0, 0), (0, 1)]
    event = _only_event(guard)
    assert caught.value.event is event
    assert "intensity_scaler_inv_loss became NaN" in str(caught.value)
    # The writer was flushed before raising (on_train_end does not run).
    assert [step for step, _ in tensorboard_events.scalars(str(tmp_path))["nan/first_step"]] == [2]


def test_validation_nan_stops_at_epoch_end(fresh_model, small_data, capsys):
    model = fresh_model()
    val_targets = _targets(small_data, "pred_intensity", 1)
    counter, guard = Counter(), NaNGuard(restore_weights=True)
    _fit(model, small_data, [counter, guard], epochs=3,
         validation_data=(small_data.model_inputs(), val_targets))

    assert counter.batches == [(0, b) for b in range(BATCHES_PER_EPOCH)]
    assert counter.epochs_ended == 1
    event = _only_event(guard)
    assert (event["phase"], event["epoch"], event["batch"], event["step"]) == ("val", 0, 1, BATCHES_PER_EPOCH)
    assert event["components"][0] == "val_pred_intensity_loss"
    assert "val_loss" in event["components"]
    assert event["weights_restored"] is False
    assert math.isfinite(event["last_finite"]["val_pred_intensity_loss"])
    out = capsys.readouterr().out
    assert "validation batch 1" in out and "end of this epoch" in out

    # Without check_validation the same data trains to the end.
    model = fresh_model()
    counter, guard = Counter(), NaNGuard(check_validation=False, verbose=0)
    _fit(model, small_data, [counter, guard], epochs=2,
         validation_data=(small_data.model_inputs(), val_targets))
    assert len(counter.batches) == 2 * BATCHES_PER_EPOCH
    assert guard.record.nan_events == [] and guard.record.status == "completed"


def test_event_in_tensorboard_and_recorded_once(fresh_model, small_data, tmp_path):
    model = fresh_model()
    run = Run(tmp_path, scenario="nan")
    guard = NaNGuard(run=run, verbose=0)
    # Validation runs after the stop on the NaN weights: it must not be a second event.
    _fit(model, small_data, [guard], _targets(small_data, "pred_intensity", 2),
         validation_data=(small_data.model_inputs(), small_data.model_targets()))

    assert guard.record is run.record and run.record.scenario == "nan"
    event = _only_event(guard)
    assert tensorboard_events.scalars(str(tmp_path))["nan/first_step"] == [(3, 3.0)]
    [(step, text)] = tensorboard_events.texts(str(tmp_path))["nan/event"]
    assert step == 3
    assert "\n" not in text
    assert "pred_intensity_loss became NaN" in text and "step 3" in text
    # The record with the event survives a JSON round trip.
    assert RunRecord.from_json(run.record.to_json()).nan_events[0]["components"] == event["components"]


def test_clean_training_records_nothing_and_runs_to_the_end(fresh_model, small_data, tmp_path):
    model = fresh_model()
    counter, guard = Counter(keep_weights=True), NaNGuard(restore_weights=True, log_dir=tmp_path)
    _fit(model, small_data, [counter, guard], epochs=2)

    assert len(counter.batches) == 2 * BATCHES_PER_EPOCH
    assert guard.record.nan_events == [] and guard.record.status == "completed"
    assert model.stop_training is False
    # The snapshot does not touch the weights.
    for got, expected in zip(watched_variables(model), counter.weights[(1, BATCHES_PER_EPOCH - 1)]):
        np.testing.assert_array_equal(got.numpy(), expected)
    train_dir = tmp_path / "ptycho" / "train"
    assert not train_dir.exists() or "nan/event" not in tensorboard_events.texts(str(tmp_path))


def test_snapshot_only_when_restore_is_asked_for(fresh_model, small_data):
    model = fresh_model()
    guard = NaNGuard(restore_weights=False, verbose=0)
    _fit(model, small_data, [guard], epochs=1)
    assert guard._step_guard.shadows is None
    assert guard._step_guard.check_weights  # the weight check still runs, in the step,
    assert guard._train_check is None  # which hands out its verdict: the batch hook makes no call of its own


def test_defaults_and_arguments(tmp_path):
    guard = NaNGuard(on_nan="raise", check_weights=False, check_validation=False, verbose=0)
    assert (guard.on_nan, guard.restore_weights, guard.check_weights, guard.check_validation, guard.forensics,
            guard.forensics_max_bytes) == ("raise", True, False, False, False, 256 * 2**20)
    assert NaNGuard(log_dir=tmp_path).forensics, "with a run directory, forensics are on by default"
    assert not NaNGuard(log_dir=tmp_path, forensics=False).forensics
    with pytest.raises(ValueError, match="log_dir"):
        NaNGuard(forensics=True)
    with pytest.raises(ValueError, match="on_nan"):
        NaNGuard(on_nan="ignore")


def _small_dense_model(steps_per_execution=1, jit_compile=False):
    """Two named losses on a dense model: XLA on the CPU compiles it under both Keras versions
    (tf_keras cannot compile the stand-in's UpSampling2D gradient there)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    first = keras.layers.Dense(1, name="first")(hidden)
    second = keras.layers.Dense(1, name="second")(hidden)
    model = keras.Model(inputs, {"first": first, "second": second})
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"first": "mse", "second": "mae"},
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return model


def _dense_data(nan_batch=None):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4 * BATCH, 6)).astype("float32")
    y = {"first": rng.normal(size=(4 * BATCH, 1)).astype("float32"),
         "second": rng.normal(size=(4 * BATCH, 1)).astype("float32")}
    if nan_batch is not None:
        y["second"][nan_batch * BATCH] = np.nan
    return x, y


@pytest.mark.parametrize("steps_per_execution, jit_compile", [(3, False), (1, True), (3, True)])
def test_exact_step_under_steps_per_execution_and_xla(steps_per_execution, jit_compile):
    model = _small_dense_model(steps_per_execution, jit_compile)
    counter, guard = Counter(), NaNGuard(restore_weights=True, verbose=0)
    x, y = _dense_data(nan_batch=1)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[counter, guard])

    # Keras calls the hooks once per execution: with 3 steps per call its
    # only hook comes after batch 2, one step after the failing one.
    assert counter.batches == ([(0, 2)] if steps_per_execution == 3 else [(0, 0), (0, 1)])
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"]) == (0, 1, 2)
    assert event["components"][0] == "second_loss"
    assert event["weights_restored"] is True

    # The weights put back are those after step 1: a twin trained on the first batch alone has them.
    twin = _small_dense_model()
    twin.fit(x[:BATCH], {k: v[:BATCH] for k, v in y.items()}, batch_size=BATCH, epochs=1, shuffle=False,
             verbose=0)
    for got, expected in zip(model.weights, twin.weights):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


class TrainFunctions(keras.callbacks.Callback):
    """Notes the train function Keras calls in each fit."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.seen.append(self.model.train_function)


def test_later_fits_reuse_the_guarded_train_function_until_the_model_is_compiled_again():
    model = _small_dense_model()
    x, y = _dense_data()
    functions = TrainFunctions()
    for _ in range(2):  # a new guard each fit, as default_callbacks makes
        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[functions, NaNGuard(restore_weights=True, verbose=0)])
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[functions])
    guarded, again, own = functions.seen
    assert again is guarded, "the second fit traced the guarded step again"
    assert own is not guarded and "train_step" not in vars(model), "the model did not get its own step back"
    kept = vars(model)["_ptycho_callbacks_step_guard"]
    assert kept.shadows and sum(np.size(shadow.numpy()) for shadow in kept.shadows) == 0, \
        "the weights' snapshot still holds memory after fit"

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"first": "mse", "second": "mae"},
                  steps_per_execution=3)
    counter, guard = Counter(), NaNGuard(verbose=0)
    x, y = _dense_data(nan_batch=1)
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[functions, counter, guard])
    assert functions.seen[-1] is not guarded, "a compile must give a new guarded step"
    assert counter.batches == [(0, 2)]  # one call of 3 steps: the new compile's setting is in force
    event = _only_event(guard)
    assert (event["batch"], event["step"]) == (1, 2)


class UntrackedLossModel(keras.Model):
    """A custom train step that logs its batch loss itself: Keras has no tracker of it for the guard to read."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1, name="dense")

    def call(self, inputs):
        return self.dense(inputs)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return {"loss": loss}


def test_a_loss_logged_without_a_tracker_is_guarded_too():
    keras.utils.set_random_seed(0)
    model = UntrackedLossModel()
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    x, y = _dense_data(nan_batch=2)
    counter, guard = Counter(), NaNGuard(restore_weights=True, verbose=0)
    model.fit(x, y["second"], batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[counter, guard])

    assert counter.batches == [(0, 0), (0, 1), (0, 2)]
    event = _only_event(guard)
    assert (event["epoch"], event["batch"], event["step"]) == (0, 2, 3)
    assert event["components"][0] == "loss" and math.isnan(event["values"]["loss"])  # then the weights it spoilt
    assert event["last_finite"]["loss"] == pytest.approx(counter.losses[1])  # the batch loss, logged as it is
    assert all(np.all(np.isfinite(np.asarray(w))) for w in model.weights)
