"""Physics health of a PtychoPINN prediction, as small pure numpy functions.

Three early warnings of a Poisson-NLL training about to go NaN, measured on
a fixed probe batch:

- the **photon budget**: per diffraction pattern, predicted photons over
  measured photons. It drifts away from 1 when the model stops conserving
  the photon count (a dying amplitude head drives it to 0).
- the **fraction of predicted intensities at or below zero**: the Poisson
  NLL takes `log(pred_intensity)`, which is -Inf at 0 and NaN below.
- the **amplitude-head saturation fraction**: outputs pinned at a bound of
  the head's activation (0 for ReLU, 0 or 1 for a sigmoid) pass no gradient,
  so the head cannot recover from there.

Units. The model's `pred_intensity` output is compared with what the Poisson
NLL compares it with: the `pred_intensity` training target of the same
patterns, `(intensity_scale * X)**2`. With the dataset-derived
`intensity_scale = sqrt(nphotons / E[sum_xy X**2])` that target sums to
`nphotons` per pattern on average: it is the measured photon count in the
model's units (`X = gain * sqrt(counts)`, so the target is
`(intensity_scale * gain)**2 * counts`). Raw photon counts must be multiplied
by `(intensity_scale * normalize_gain)**2` before they are compared.

Like `ptycho_callbacks.stats`, undefined quantities are `None` with a
`reason`, never NaN; NaN/Inf inputs, empty and all-zero inputs never raise.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ptycho_callbacks import stats

PATTERN_AXES = (1, 2)
"""Axes summed over for one diffraction pattern: (y, x) of `(batch, N, N, channels)`."""

ACTIVATION_RANGES = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "relu": (0.0, None),
    "relu6": (0.0, 6.0),
    "softplus": (0.0, None),
    "exponential": (0.0, None),
    "tanh": (-1.0, 1.0),
}
"""Bounds (low, high; None: unbounded) of activations an amplitude head commonly uses."""

SATURATION_TOLERANCE = 1e-3
"""A head output within this distance of a bound of its activation counts as saturated."""

WARNING_THRESHOLDS = {"photon_budget": 0.2, "nonpositive_fraction": 0.01, "saturation_fraction": 0.05}
"""How much each health measure must move to count as moved (see `moved_before`)."""

MEASURES = ("photon_budget", "nonpositive_fraction", "saturation_fraction")
"""The health measures of an evaluation, in report order."""


def _pattern_sums(values: np.ndarray) -> np.ndarray:
    """Sum over each diffraction pattern: over (y, x) of a 4-D array, over all but the first axis otherwise."""
    axes = PATTERN_AXES if values.ndim == 4 else tuple(range(1, values.ndim))
    return values.sum(axis=axes).ravel()


def photon_budget(pred_intensity: Any, measured: Any) -> dict:
    """Per pattern, predicted over measured photons: `sum_xy pred / sum_xy measured`.

    Both arrays are `(batch, N, N, channels)` (one pattern per sample and
    channel) in the same units, see the module docstring. Patterns whose
    sums are not finite, or whose measured sum is 0, are left out.

    Returns:
        `{"mean", "p05", "p95", "median", "count", "reason"}` over the kept
        patterns' ratios; the statistics are None (with `reason`) when no
        pattern is kept.
    """
    pred, counts = np.asarray(pred_intensity, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if pred.shape != counts.shape:
        raise ValueError(f"predicted intensity shape {pred.shape} != measured counts shape {counts.shape}")
    with np.errstate(all="ignore"):
        predicted, observed = _pattern_sums(pred), _pattern_sums(counts)
        ratios = predicted / observed
    kept = np.isfinite(ratios) & np.isfinite(observed) & (observed != 0)
    result = {"mean": None, "median": None, "p05": None, "p95": None, "count": int(kept.sum()), "reason": None}
    if kept.any():
        result.update(stats._percentiles(ratios[kept]))
    elif predicted.size == 0:
        result["reason"] = "no pattern"
    elif not np.isfinite(predicted).any():
        result["reason"] = "prediction not finite"
    else:
        result["reason"] = "no pattern with a finite, nonzero measured sum"
    return result


def nonpositive_fraction(pred_intensity: Any) -> dict:
    """Fraction of predicted intensities `<= 0` among the finite ones.

    These are the pixels where the Poisson NLL's `log(pred_intensity)` is
    -Inf (at 0) or NaN (below 0).

    Returns:
        `{"fraction", "count", "nonfinite_count", "reason"}`: `count` is the
        number of finite values the fraction is taken over; `fraction` is
        None (with `reason`) when there is none.
    """
    values = np.asarray(pred_intensity, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    result = {"fraction": None, "count": int(finite.size), "nonfinite_count": int(values.size - finite.size),
              "reason": None}
    if finite.size:
        result["fraction"] = float(np.mean(finite <= 0))
    else:
        result["reason"] = "no finite predicted intensity" if values.size else "no predicted intensity"
    return result


def saturation_fraction(head_output: Any, low: float | None, high: float | None,
                        tolerance: float = SATURATION_TOLERANCE) -> dict:
    """Fraction of the amplitude head's finite outputs within `tolerance` of a bound of its activation.

    A value `v` is saturated when `v <= low + tolerance` or
    `v >= high - tolerance` (a None bound is never reached). For a ReLU
    head (`low=0, high=None`) this is the fraction of dead outputs.

    Returns:
        `{"fraction", "count", "low", "high", "reason"}`; `fraction` is None
        (with `reason`) when both bounds are None or no value is finite.
    """
    values = np.asarray(head_output, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    result = {"fraction": None, "count": int(finite.size), "low": low, "high": high, "reason": None}
    if low is None and high is None:
        result["reason"] = "activation range unknown"
    elif finite.size == 0:
        result["reason"] = "no finite head output"
    else:
        saturated = np.zeros(finite.shape, dtype=bool)
        if low is not None:
            saturated |= finite <= low + tolerance
        if high is not None:
            saturated |= finite >= high - tolerance
        result["fraction"] = float(saturated.mean())
    return result


def measure_value(evaluation: Mapping, measure: str) -> float | None:
    """The headline number of one measure in an evaluation (budget mean, the two fractions)."""
    entry = evaluation.get(measure) or {}
    return stats.finite_or_none(entry.get("mean" if measure == "photon_budget" else "fraction"))


def moved_before(evaluations: Sequence[Mapping], failure_step: int,
                 thresholds: Mapping[str, float] | None = None) -> list[dict]:
    """Which health measures moved between the first evaluation and the last one before a failure.

    Evaluations are dicts with a global `step` and the `MEASURES` (as made
    by `PhysicsHealth`); those at `step >= failure_step` came after the
    failure and are ignored. The photon budget moved when its mean changed
    by more than `thresholds["photon_budget"]` relative to the first value;
    the fractions moved when they rose by more than their threshold
    (absolute). Defaults: `WARNING_THRESHOLDS`.

    Returns:
        One dict per measure: `{"measure", "first", "last", "moved", "reason"}`
        (`first`/`last`: the values of the first and last evaluation before
        the failure, None without any); `moved` is None (with `reason`) when
        it cannot be told.
    """
    limits = {**WARNING_THRESHOLDS, **(thresholds or {})}
    before = [e for e in evaluations if isinstance(e.get("step"), int) and e["step"] < failure_step]
    result = []
    for measure in MEASURES:
        entry = {"measure": measure, "first": None, "last": None, "moved": None, "reason": None}
        series = [(e["step"], measure_value(e, measure)) for e in before]
        series = [value for _, value in sorted(series, key=lambda pair: pair[0]) if value is not None]
        if series:
            entry["first"], entry["last"] = series[0], series[-1]
        if len(series) < 2:
            entry["reason"] = "fewer than two evaluations before the failure"
        else:
            first, last = series[0], series[-1]
            if measure == "photon_budget":
                if first == 0:
                    entry["reason"] = "first photon budget is 0"
                else:
                    entry["moved"] = abs(last - first) / abs(first) > limits[measure]
            else:
                entry["moved"] = last - first > limits[measure]
        result.append(entry)
    return result
