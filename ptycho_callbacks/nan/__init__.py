"""The NaN machinery: catch the first non-finite value of a training, say where it came from, keep what it broke.

- `guard`: `NaNGuard`, the callback, a thin adapter over the rest;
- `step_guard`: `StepGuard`, the finite check that runs inside Keras's train
  step (exact step, weights snapshot, failing batch kept on the device);
- `events`: the event, its order, message and hints (pure Python);
- `capture`: the failing step written to `<run>/nan_forensics/`, and read back;
- `replay`: the failing step replayed with per-op numeric checking.

Nothing is imported here, so that `events` stays usable without TensorFlow.
"""
