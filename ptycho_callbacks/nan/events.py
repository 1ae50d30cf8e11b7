"""A NaN event: what went non-finite, where, the last finite values, and the line that tells a person.

Pure Python: `NaNGuard` gathers the values on the device and hands them here
to be built into the event of `RunRecord.nan_events` and its message.

Conventions of an event: `epoch` and `batch` are 0-based, as Keras passes
them to callbacks (the progress bar shows them 1-based); `step` counts the
train steps, the failing one included (1-based), on from the optimizer's
step count at train begin: the step our other callbacks use on
TensorBoard's x axis. The guard counts them itself, since
`optimizer.iterations` stands still on the steps a loss-scale optimizer
skips and between the updates of gradient accumulation.
"""

import math

import numpy as np

LOG_SCALE = "log_scale"
"""Component name of the intensity scaler's `log_scale` in an event."""

WEIGHTS = "weights"
"""Component name of the model's weights (other than `log_scale`) in an event."""

HINTS = {
    "pred_intensity_loss": "Look for a predicted intensity of 0 (the Poisson NLL then takes log(0): dead "
                           "amplitude head, learning rate too high) or NaN/Inf in the intensity targets",
    "intensity_scaler_inv_loss": "Look for NaN/Inf in the amplitude targets, the predicted amplitude "
                                 "and exp(log_scale)",
    "trimmed_obj_loss": "Look for NaN/Inf in the object targets and the predicted object (trimmed_obj)",
    "loss": "Look at the loss weights and any regularization loss",
    LOG_SCALE: "Look at what updates or assigns the intensity scaler's log_scale",
    WEIGHTS: "Look at the update of the listed weights (nonfinite_weights of the event): usually a "
             "learning rate too high",
}
"""Where to look first, by the component that went non-finite first."""


class NonFiniteTrainingError(RuntimeError):
    """Raised by `NaNGuard(on_nan="raise")` when a loss, log_scale or weight is NaN or Inf.

    Attributes:
        event: the event dict, as appended to `record.nan_events`.
    """

    def __init__(self, message, event=None):
        super().__init__(message)
        self.event = event


def as_float(value):
    """`value` as a float, None when it is not one number."""
    if type(value) is float:  # what Keras hands batch hooks, every batch
        return value
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def is_finite(value):
    return value is not None and math.isfinite(value)


def finite_only(values):
    """The entries of {name: value} that are finite numbers."""
    return {name: value for name, value in values.items() if is_finite(value)}


def describe(value):
    """A value as a person reads it: NaN, +Inf, -Inf or three significant digits."""
    if value is None:
        return "none"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.3g}"


def order(names):
    """Components first (in Keras's order), then the total, then `log_scale`, then the weights."""
    def rank(name):
        bare = name[4:] if name.startswith("val_") else name
        if name in (LOG_SCALE, WEIGHTS):
            return 2 if name == LOG_SCALE else 3
        return 1 if bare == "loss" else 0
    return sorted(names, key=rank)


def build_event(epoch, batch, step, phase, values, last_finite, nonfinite_variables=(), check_weights=True):
    """The event of a non-finite batch.

    Args:
        epoch, batch, step: where (see the module's conventions).
        phase: "train" or "val".
        values: {name: value} of the batch's losses (and `log_scale`).
        last_finite: {name: value} the last finite value of each name before
            this batch; updated with the names still finite at this batch.
        nonfinite_variables: [(name, value, is log_scale)] of the watched
            variables that were non-finite when the guard fired.
        check_weights: whether a non-finite weight counts as a component.

    Returns:
        {"epoch", "batch", "step", "phase", "components" (in `order`),
        "values", "last_finite", "weights_restored" (False),
        "restored_after_step" (None: the guard sets it when it restores weights
        other than those of train begin), "nonfinite_weights"}.
    """
    values = dict(values)
    extra = {}
    for name, value, is_scale in nonfinite_variables:
        if is_scale:
            values[LOG_SCALE] = value
    others = [value for _, value, is_scale in nonfinite_variables if not is_scale]
    if others and check_weights:
        extra[WEIGHTS] = others[0]
    last_finite.update(finite_only(values))
    components = order([name for name, value in values.items() if not is_finite(value)] + list(extra))
    names = order(list(values) + [name for name in last_finite if name not in values])
    return {
        "epoch": int(epoch),
        "batch": int(batch),
        "step": int(step),
        "phase": phase,
        "components": components,
        "values": {name: extra[name] if name in extra else values[name] for name in components},
        "last_finite": {name: last_finite.get(name) for name in names if name != WEIGHTS},
        "weights_restored": False,
        "restored_after_step": None,
        "nonfinite_weights": [name for name, _, _ in nonfinite_variables],
    }


def restore_note(snapshot_step, fit_start_step, optimizer_finite):
    """The sentence saying which weights were put back after a training event."""
    if snapshot_step <= fit_start_step:
        where = "the weights of train begin (no step had finished with everything finite)"
    else:
        where = f"the weights after step {snapshot_step}, the last finite step"
    note = f" Restored {where}."
    if not optimizer_finite:
        note += " The optimizer's state is non-finite too: re-compile before training on."
    return note


def message(event, on_nan, in_fit, notes=""):
    """The one line that tells a person what went non-finite, where, what was done and where to look.

    Args:
        event: a `build_event` result.
        on_nan: "stop" or "raise".
        in_fit: False when the event came outside `model.fit` (nothing to stop).
        notes: sentences to add after what was done (restore, forensics).
    """
    first = event["components"][0] if event["components"] else "loss"
    value = event["values"].get(first)
    what = {float("inf"): "+Inf", float("-inf"): "-Inf"}.get(value, "NaN")
    where = "validation batch" if event["phase"] == "val" else "batch"
    if first == WEIGHTS:
        names = event["nonfinite_weights"]
        subject = f"weight {names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
    else:
        subject = first
    last = describe(event["last_finite"].get(first)) if first != WEIGHTS else None
    parts = [f"NaNGuard: {subject} became {what} at epoch {event['epoch']}, {where} {event['batch']} "
             f"(indices from 0; step {event['step']} = train steps done, this one included)"]
    if last is not None:
        parts.append(f"; last finite value {last}")
    others = [c for c in event["components"] if c != first]
    if others:
        parts.append(f"; also non-finite: {', '.join(others)}")
    parts.append(".")
    if on_nan == "raise":
        parts.append(" Raising NonFiniteTrainingError.")
    elif not in_fit:
        parts.append(" (Not in model.fit: nothing to stop.)")
    elif event["phase"] == "val":
        parts.append(" Training stops at the end of this epoch.")
    else:
        parts.append(" Training stopped.")
    parts.append(notes)
    bare = first[4:] if first.startswith("val_") else first
    hint = HINTS.get(bare, f"Look at what feeds {bare}")
    if event["phase"] == "val":
        hint += "; the training batches were finite, so look at the validation data first"
    parts.append(f" {hint}.")
    return "".join(parts)
