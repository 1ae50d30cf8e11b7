import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.loss_components import LossComponents
from ptycho_callbacks.nan.guard import NaNGuard
from ptycho_callbacks.callbacks.loss_discovery import compiled_loss_weights
from ptycho_callbacks.sim.model import negloglik, realspace_loss

import tensorboard_events

pytestmark = pytest.mark.keras

WEIGHTS = (0.5, 1.0, 2.0)
NAMES = ("trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss")
SEED = 1
"""Keras's random seed before each stand-in model (`make_model`) is built."""


class HandComputedLosses(keras.callbacks.Callback):
    """Computes each batch's losses by hand, before the step updates the weights."""

    def __init__(self, inputs, targets, batch_size):
        super().__init__()
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.expected = []

    def on_train_batch_begin(self, batch, logs=None):
        part = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        outputs = self.model({k: v[part] for k, v in self.inputs.items()}, training=False)
        fns = (realspace_loss, lambda t, p: tf.reduce_mean(tf.abs(t - p), axis=(1, 2, 3)), negloglik)
        names = ("trimmed_obj", "intensity_scaler_inv", "pred_intensity")
        values = {f"{n}_loss": float(tf.reduce_mean(fn(self.targets[n][part], out)))
                  for n, fn, out in zip(names, fns, outputs)}
        values["loss"] = sum(w * values[n] for w, n in zip(WEIGHTS, NAMES))
        self.expected.append(values)


def test_discovers_the_compiled_components_and_weights(make_model):
    assert compiled_loss_weights(make_model(SEED, loss_weights=WEIGHTS)) == dict(zip(NAMES, WEIGHTS))


def test_per_batch_values_are_the_losses_of_that_batch(make_model, small_data, tmp_path):
    inputs, targets = small_data.model_inputs(), small_data.model_targets()
    model = make_model(SEED, loss_weights=WEIGHTS)
    hand = HandComputedLosses(inputs, targets, batch_size=5)  # 16 groups: batches of 5, 5, 5 and 1
    components = LossComponents(log_dir=str(tmp_path))
    model.fit(inputs, targets, batch_size=5, epochs=2, shuffle=False, verbose=0,
              callbacks=[hand, components])
    record = components.record
    assert record.batch_steps == list(range(1, 9))
    for name in ("loss",) + NAMES:
        np.testing.assert_allclose(record.batch_history[name], [e[name] for e in hand.expected],
                                   rtol=2e-4, err_msg=name)

    written = tensorboard_events.scalars(str(tmp_path))
    for name in ("loss",) + NAMES:
        steps, values = zip(*written[f"loss/batch/{name}"])
        assert list(steps) == list(range(1, 9))
        np.testing.assert_allclose(values, [e[name] for e in hand.expected], rtol=2e-4)
    for weight, name in zip(WEIGHTS, NAMES):
        _, weighted = zip(*written[f"loss/batch_weighted/{name}"])
        np.testing.assert_allclose(weighted, [weight * e[name] for e in hand.expected], rtol=2e-4)
        steps, change = zip(*written[f"loss/batch_change/{name}"])
        assert list(steps) == list(range(1, 9))
        np.testing.assert_allclose(change, [e[name] - hand.expected[0][name] for e in hand.expected],
                                   rtol=1e-3, atol=1e-3 * abs(hand.expected[0][name]))
    _, residual = zip(*written["loss/batch/residual"])
    assert np.max(np.abs(residual)) < 1e-3 * np.max(np.abs([e["loss"] for e in hand.expected]))


def test_per_batch_shares_are_of_the_loss_movement_and_in_zero_one(make_model, small_data, tmp_path):
    """The shares TensorBoard gets are |w·(L − L at the first batch)| / Σ, never negative, whatever the total."""
    inputs, targets = small_data.model_inputs(), small_data.model_targets()
    model = make_model(SEED, loss_weights=WEIGHTS)
    hand = HandComputedLosses(inputs, targets, batch_size=5)
    model.fit(inputs, targets, batch_size=5, epochs=2, shuffle=False, verbose=0,
              callbacks=[hand, LossComponents(log_dir=str(tmp_path))])
    written = tensorboard_events.scalars(str(tmp_path))
    assert not any(tag.startswith("loss/batch_share/") for tag in written)  # the share of the total is gone
    shares = {name: dict(written[f"loss/batch_movement_share/{name}"]) for name in NAMES}
    steps = sorted(shares[NAMES[0]])
    assert steps == list(range(2, 9))  # step 1 is the first batch: nothing moved yet
    first = hand.expected[0]
    for step in steps:
        values = [shares[name][step] for name in NAMES]
        assert all(0.0 <= value <= 1.0 for value in values), (step, values)
        assert sum(values) == pytest.approx(1.0, abs=1e-5)
        moved = [abs(w * (hand.expected[step - 1][n] - first[n])) for w, n in zip(WEIGHTS, NAMES)]
        np.testing.assert_allclose(values, np.array(moved) / sum(moved), atol=2e-3)


@pytest.mark.parametrize("order", ["guard first", "guard last"])
def test_values_shared_with_the_guard_are_still_those_of_each_batch(make_model, small_data, order):
    """One note of the trackers per batch serves both callbacks, whichever comes first; the event's last finite
    values come from the same notes."""
    inputs, targets = small_data.model_inputs(), small_data.model_targets()
    model = make_model(SEED, loss_weights=WEIGHTS)
    hand = HandComputedLosses(inputs, targets, batch_size=5)
    components, guard = LossComponents(), NaNGuard(verbose=0)
    ours = [guard, components] if order == "guard first" else [components, guard]
    for _ in range(2):  # a second fit starts the step count and Keras's trackers afresh
        model.fit(inputs, targets, batch_size=5, epochs=2, shuffle=False, verbose=0, callbacks=[hand] + ours,
                  validation_data=(inputs, targets))
    record = components.record
    assert record.batch_steps == list(range(1, 9)) + list(range(9, 17))
    for name in ("loss",) + NAMES:
        np.testing.assert_allclose(record.batch_history[name], [e[name] for e in hand.expected],
                                   rtol=2e-4, err_msg=name)
    last_finite = guard.run.batches.last_finite
    assert set(last_finite) == {"loss"} | set(NAMES) | {"log_scale"}
    for name in ("loss",) + NAMES:
        assert last_finite[name] == pytest.approx(hand.expected[-1][name], rel=2e-4), name


def test_epoch_values_for_training_and_validation(make_model, small_data, tmp_path):
    inputs, targets = small_data.model_inputs(), small_data.model_targets()
    model = make_model(SEED, loss_weights=WEIGHTS)
    history = model.fit(inputs, targets, batch_size=4, epochs=2, verbose=0, validation_split=0.25,
                        callbacks=[LossComponents(update_freq="epoch", log_dir=str(tmp_path))])
    train = tensorboard_events.scalars(str(tmp_path), "train")
    validation = tensorboard_events.scalars(str(tmp_path), "validation")
    assert not any(tag.startswith("loss/batch") for tag in train)
    for name in ("loss",) + NAMES:
        assert [s for s, _ in train[f"loss/epoch/{name}"]] == [1, 2]  # epochs completed
        np.testing.assert_allclose([v for _, v in train[f"loss/epoch/{name}"]], history.history[name],
                                   rtol=1e-6)
        np.testing.assert_allclose([v for _, v in validation[f"loss/epoch/{name}"]],
                                   history.history[f"val_{name}"], rtol=1e-6)


def test_each_component_has_its_own_custom_scalars_chart(make_model, tmp_path, small_data):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    model = make_model(SEED, loss_weights=WEIGHTS)
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=8, epochs=1, verbose=0,
              callbacks=[LossComponents(log_dir=str(tmp_path))])
    accumulator = tensorboard_events.load(str(tmp_path))
    events = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(tensorboard_events.tensor_util.make_ndarray(
        events[0].tensor_proto).item())
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category
              for chart in category.chart}
    # Each component on its own chart (values orders of magnitude apart never share an axis), and the shares.
    for name in ("loss",) + NAMES:
        assert charts[f"{name} per batch"] == [rf"loss/batch/{name}$"]
        assert charts[f"{name} per epoch"] == [rf"loss/epoch/{name}$"]
    (share_chart,) = [regexes for title, regexes in charts.items() if title.startswith("share of the loss")]
    assert share_chart == [r"loss/batch_movement_share/.*"]
    assert not any(regexes == [r"loss/batch/.*"] for regexes in charts.values())


def test_bad_update_freq_is_refused():
    with pytest.raises(ValueError, match="update_freq"):
        LossComponents(update_freq=0)
