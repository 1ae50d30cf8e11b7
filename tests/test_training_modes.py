"""The NaN event names the exact step, and the right weights come back, in the training modes Keras offers."""

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks import NaNGuard
from ptycho_callbacks._keras import IS_LEGACY, keras

pytestmark = pytest.mark.keras

BATCH, STEPS = 4, 4  # 16 samples: 4 steps an epoch


def _dataset(nan_at=None):
    """Batches of 4 samples, 4 an epoch, repeated; a NaN target in batch `nan_at[1]` of epoch `nan_at[0]` only."""
    x = np.random.default_rng(0).normal(size=(3 * STEPS * BATCH, 3)).astype("float32")
    y = np.zeros((len(x), 1), "float32")
    if nan_at is not None:
        y[(nan_at[0] * STEPS + nan_at[1]) * BATCH + 1] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


def _fit(optimizer, nan_at, policy="float32", **compile_args):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1, dtype="float32")])
        model.compile(optimizer=optimizer, loss="mse", **compile_args)
        guard = NaNGuard(verbose=0)
        kept = []
        watch = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: kept.append([np.array(w) for w in model.get_weights()]))
        model.fit(_dataset(nan_at), epochs=3, steps_per_epoch=STEPS, verbose=0, callbacks=[watch, guard])
        return model, guard, kept
    finally:
        keras.mixed_precision.set_global_policy("float32")


MODES = {
    "mixed_float16": (lambda: keras.optimizers.SGD(0.01), "mixed_float16", {}),
    "mixed_float16_two_steps_per_call_xla": (lambda: keras.optimizers.SGD(0.01), "mixed_float16",
                                             {"steps_per_execution": 2, "jit_compile": True}),
}
if not IS_LEGACY:  # tf_keras's optimizers have no gradient accumulation
    MODES["gradient_accumulation"] = (lambda: keras.optimizers.SGD(0.01, gradient_accumulation_steps=2),
                                      "float32", {})
    MODES["accumulation_and_ema"] = (lambda: keras.optimizers.SGD(0.01, gradient_accumulation_steps=2,
                                                                   use_ema=True), "float32", {})
    MODES["accumulation_four_steps_per_call"] = (lambda: keras.optimizers.SGD(0.01, gradient_accumulation_steps=2),
                                                 "float32", {"steps_per_execution": 4})


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_event_names_the_exact_step_and_the_weights_of_the_step_before(mode):
    make_optimizer, policy, compile_args = MODES[mode]
    model, guard, kept = _fit(make_optimizer(), nan_at=(1, 2), policy=policy, **compile_args)
    [event] = guard.record.nan_events
    assert (event["epoch"], event["batch"], event["step"]) == (1, 2, STEPS + 3)
    assert event["weights_restored"]
    per_call = compile_args.get("steps_per_execution", 1)
    last_finite = STEPS + 2  # step 6
    if "ema" in mode or last_finite % per_call:
        # Keras writes the moving averages over the weights at the end of fit, as asked; and the hooks of
        # several steps per call see no weights between the call's steps to compare with.
        assert all(np.all(np.isfinite(weight)) for weight in model.get_weights())
        return
    before = kept[last_finite // per_call - 1]  # kept after each call
    for restored, expected in zip(model.get_weights(), before):
        np.testing.assert_array_equal(restored, expected)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_finite_training_never_fires_the_guard(mode):
    make_optimizer, policy, compile_args = MODES[mode]
    _, guard, kept = _fit(make_optimizer(), nan_at=None, policy=policy, **compile_args)
    assert guard.record.nan_events == [] and len(kept) == 3 * STEPS // compile_args.get("steps_per_execution", 1)
