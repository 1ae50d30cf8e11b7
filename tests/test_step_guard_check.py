"""StepGuard.check on plain variables: which step saves the snapshot, which fires, and what a firing keeps.

These cases walk every outcome (save, fire, neither, nothing once fired),
with and without the snapshot and the weights' check, and the batch and
tracker state kept at a firing, in a tf.function as in the train step.
"""

import types

import numpy as np
import pytest
import tensorflow as tf

from ptycho_callbacks.nan.step_guard import StepGuard

pytestmark = pytest.mark.keras


def _guard(check_weights, keep_snapshot, capture_batch=False):
    weights = tf.Variable([1.0, 2.0], name="w")
    scale = tf.Variable(0.5, name="log_scale")
    guard = StepGuard(types.SimpleNamespace(), [weights, scale], check_weights=check_weights,
                      keep_snapshot=keep_snapshot, capture_batch=capture_batch, log_scale_index=1)
    guard.reset(0)
    return guard, weights


def _steps(guard, weights, plan):
    """Runs `plan` ([(weights' value, losses finite)] per step); returns (fired, first bad, snapshot step) after each."""
    check = tf.function(lambda losses_ok, step: guard.check(losses_ok, step))
    seen = []
    for step, (value, losses_ok) in enumerate(plan, start=1):
        weights.assign(value)
        fired = bool(check(tf.constant(losses_ok), tf.constant(step, tf.int64)))
        seen.append((fired, int(guard.first_bad.numpy()), guard.snapshot_step_value()))
    return seen


NAN = [np.nan, 1.0]
PLAN = [([1.0, 2.0], True), ([5.0, 6.0], True), (NAN, True), ([7.0, 8.0], False), ([9.0, 9.0], True)]


@pytest.mark.parametrize("keep_snapshot", [True, False])
def test_a_non_finite_weight_fires_at_its_step_and_nothing_is_saved_after(keep_snapshot):
    guard, weights = _guard(check_weights=True, keep_snapshot=keep_snapshot)
    seen = _steps(guard, weights, PLAN)
    saved = [1, 2, 2, 2, 2] if keep_snapshot else [0] * 5
    assert seen == list(zip([False, False, True, False, False], [-1, -1, 3, 3, 3], saved))
    if keep_snapshot:
        np.testing.assert_array_equal(guard.snapshot_values()[0], [5.0, 6.0])


@pytest.mark.parametrize("keep_snapshot", [True, False])
def test_without_the_weights_check_a_non_finite_weight_neither_fires_nor_is_saved(keep_snapshot):
    guard, weights = _guard(check_weights=False, keep_snapshot=keep_snapshot)
    seen = _steps(guard, weights, PLAN)
    # Step 3: finite losses, a NaN weight: no firing, and not saved either; step 4's loss fires.
    saved = [1, 2, 2, 2, 2] if keep_snapshot else [0] * 5
    assert seen == list(zip([False, False, False, True, False], [-1, -1, -1, 4, 4], saved))
    if keep_snapshot:
        np.testing.assert_array_equal(guard.snapshot_values()[0], [5.0, 6.0])


def test_a_firing_keeps_the_batch_and_the_tracker_state_of_its_step():
    guard, weights = _guard(check_weights=True, keep_snapshot=True, capture_batch=True)
    batches = [np.full([2, 3], float(step), np.float32) for step in range(1, 4)]
    guard.prepare_capture(iter(tf.data.Dataset.from_tensors(batches[0])))

    @tf.function
    def check(losses_ok, step, batch, state):
        return guard.check(losses_ok, step, batch=[batch], state=state)

    fired = []
    for step, losses_ok in enumerate([True, False, False], start=1):
        state = tf.constant([step, 10.0 * step], tf.float64)
        fired.append(bool(check(tf.constant(losses_ok), tf.constant(step, tf.int64), batches[step - 1], state)))
    assert fired == [False, True, False]
    assert int(guard.first_bad.numpy()) == 2 and guard.snapshot_step_value() == 1
    np.testing.assert_array_equal(guard.captured_batch(), batches[1])
    np.testing.assert_array_equal(guard._fired_state.numpy(), [2.0, 20.0])
