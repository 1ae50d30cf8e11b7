"""Statistics of the intensity-bias report, as small pure numpy functions.

Every function accepts NaN, Inf, empty, constant and all-zero inputs without
raising. A quantity that is undefined for the given input is returned as
`None` (never NaN), usually together with a `reason` string saying why, so
the report can print `n/a (reason)` instead of a number that was never
computed. All returned numbers are Python floats/ints. Input that is not
numbers at all (strings, objects, booleans) raises a `ValueError` saying so.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_TOLERANCE = 0.05
"""Relative tolerance of the normalization invariant and the scale comparison."""

INACTIVE_THRESHOLD = 1e-12
"""A loss component whose final |value| is at most this counts as inactive."""

INACTIVE_HINTS = {
    "trimmed_obj_loss": "`trimmed_obj_loss=0` indicates `realspace_weight=0` (TV/MAE disabled)",
}
"""What an inactive loss component usually means, by component name."""

SCALAR_MODES = ("ratio_mean", "ratio_median", "ratio_p05", "ratio_p95", "least_squares")
"""Candidate scalars of `scaling_stats`, in report order."""


def finite_or_none(value: Any) -> float | None:
    """`float(value)` when it is a finite number, else `None`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


NUMERIC_KINDS = "iuf"
"""numpy dtype kinds of real numbers (signed, unsigned, floating); complex is "c"."""


def numeric_array(values: Any, what: str = "the array", allow_complex: bool = True,
                  allow_empty: bool = True) -> np.ndarray:
    """`values` as a numpy array, or a `ValueError` that says what is wrong with it.

    Accepts int, unsigned, float and (when `allow_complex`) complex dtypes;
    refuses strings, objects and booleans, and (unless `allow_empty`) arrays
    without elements. NaN and Inf are values, not errors. The message starts
    with `what`, e.g. "stage 'raw': the array must be real ...".
    """
    try:
        array = np.asarray(values)
    except Exception as error:  # noqa: BLE001 - anything that is not array-like
        raise ValueError(f"{what} cannot be converted to an array: {error}") from None
    kinds = NUMERIC_KINDS + ("c" if allow_complex else "")
    if array.dtype.kind not in kinds:
        expected = "numeric (int, float or complex)" if allow_complex else "real (int or float)"
        raise ValueError(f"{what} must be {expected}, got dtype {array.dtype}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    return array


def _real_values(a: Any) -> np.ndarray:
    """`a` as a real array in its own float dtype (no copy when it is one); complex becomes |a|."""
    array = numeric_array(a)
    if array.dtype.kind == "c":
        return np.abs(array)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def _as_real_array(a: Any) -> np.ndarray:
    """`a` as a float64 array; complex input becomes its modulus |a|."""
    return np.asarray(_real_values(a), dtype=np.float64)


def _checked(value: Any, reason: str) -> tuple[float | None, str | None]:
    """(finite float, None), or (None, reason) when the value is not finite."""
    number = finite_or_none(value)
    return (number, None) if number is not None else (None, reason)


def array_stats(a: Any) -> dict:
    """Summary statistics of an array.

    `count` is the number of elements (`a.size`), `finite_count` the number of
    finite ones; `mean`, `std` (population, ddof=0), `min` and `max` are taken
    over the finite values only and are `None` when there are none (or when
    they overflow float64). `nan_count` and `inf_count` count the non-finite
    values. Complex input is summarised by its modulus |a|. `shape` and
    `dtype` describe the input as given.
    """
    original = numeric_array(a)
    # Summed in float64 but never copied to it: a 10^6-pixel float32 stage stays float32.
    values = _real_values(original).ravel()
    is_finite = np.isfinite(values)
    finite_count = int(np.count_nonzero(is_finite))
    finite = values if finite_count == values.size else values[is_finite]
    nan_count = int(np.count_nonzero(np.isnan(values))) if finite_count < values.size else 0
    with np.errstate(all="ignore"):
        mean = finite_or_none(finite.mean(dtype=np.float64)) if finite.size else None
        std = finite_or_none(finite.std(dtype=np.float64)) if finite.size else None
    return {
        "count": int(values.size),
        "finite_count": finite_count,
        "mean": mean,
        "std": std,
        "min": finite_or_none(finite.min()) if finite.size else None,
        "max": finite_or_none(finite.max()) if finite.size else None,
        "nan_count": nan_count,
        "inf_count": int(values.size) - finite_count - nan_count,
        "shape": list(original.shape),
        "dtype": str(original.dtype),
    }


def stage_ratios(stages: Sequence[tuple[str, float | None]]) -> list[dict]:
    """Ratios of consecutive stage means along the data path.

    For stages `(a, mean_a), (b, mean_b)`: `ratio = mean_b / mean_a`, `None`
    (with a `reason`) when either mean is missing/non-finite or `mean_a == 0`.

    Returns:
        One dict per transition: `from`, `to`, `name` (`f"{a}_to_{b}"`),
        `ratio`, `reason`.
    """
    transitions = []
    for (name_a, mean_a), (name_b, mean_b) in zip(stages, stages[1:]):
        mean_a, mean_b = finite_or_none(mean_a), finite_or_none(mean_b)
        if mean_a is None or mean_b is None:
            missing = name_a if mean_a is None else name_b
            ratio, reason = None, f"mean of {missing} undefined"
        elif mean_a == 0:
            ratio, reason = None, f"mean of {name_a} is 0"
        else:
            with np.errstate(all="ignore"):
                ratio, reason = _checked(np.float64(mean_b) / mean_a, "ratio overflows")
        transitions.append(
            {"from": name_a, "to": name_b, "name": f"{name_a}_to_{name_b}", "ratio": ratio, "reason": reason}
        )
    return transitions


def cumulative_products(ratios: Iterable[float | None]) -> list[float | None]:
    """Running products `p_k = r_1 * ... * r_k`; `None` from the first undefined on."""
    products: list[float | None] = []
    product: float | None = 1.0
    for ratio in ratios:
        ratio = finite_or_none(ratio)
        if product is not None and ratio is not None:
            with np.errstate(all="ignore"):
                product = finite_or_none(np.float64(product) * ratio)
        else:
            product = None
        products.append(product)
    return products


def _effect(ratio: float) -> str:
    """"gain" when ratio > 1, "loss" when ratio < 1, else "none"."""
    return "gain" if ratio > 1 else ("loss" if ratio < 1 else "none")


def invariant_check(transitions: Sequence[dict], tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Check the normalization invariant: the chain of stage ratios preserves amplitude.

    `product = prod(ratio_i)` over all transitions (from `stage_ratios`),
    `deviation = |product - 1|` and `passes = deviation <= tolerance`; all
    three are `None` (with a `reason`) when any ratio is undefined or there
    are no transitions. `cumulative` holds the running products.
    `breakdown` lists the defined ratios sorted by `|ratio - 1|` descending,
    each with its `deviation` and `effect` ("gain"/"loss"/"none");
    `primary` is the first of them (the largest deviation), or `None`.
    """
    ratios = [finite_or_none(t["ratio"]) for t in transitions]
    cumulative = cumulative_products(ratios)
    if not transitions:
        product, reason = None, "no stage transitions recorded"
    elif cumulative[-1] is None:
        undefined = [t["name"] for t, r in zip(transitions, ratios) if r is None]
        product = None
        reason = f"undefined ratio: {', '.join(undefined)}" if undefined else "product overflows"
    else:
        product, reason = cumulative[-1], None
    deviation = abs(product - 1.0) if product is not None else None
    breakdown = sorted(
        (
            {"name": t["name"], "ratio": r, "deviation": abs(r - 1.0), "effect": _effect(r)}
            for t, r in zip(transitions, ratios)
            if r is not None
        ),
        key=lambda item: item["deviation"],
        reverse=True,
    )
    return {
        "product": product,
        "deviation": deviation,
        "tolerance": float(tolerance),
        "passes": (deviation <= tolerance) if deviation is not None else None,
        "reason": reason,
        "cumulative": cumulative,
        "breakdown": breakdown,
        "primary": breakdown[0] if breakdown else None,
    }


def largest_drop(stages: Sequence[tuple[str, float | None]]) -> dict | None:
    """The transition with the smallest ratio below 1 (the largest loss of mean).

    Returns the `stage_ratios` dict of that transition plus `delta = ratio - 1`,
    or `None` when no defined ratio is below 1 (nothing drops).
    """
    drops = [t for t in stage_ratios(stages) if t["ratio"] is not None and t["ratio"] < 1]
    if not drops:
        return None
    smallest = min(drops, key=lambda t: t["ratio"])
    return {**smallest, "delta": smallest["ratio"] - 1.0}


def dataset_scale(nphotons: float | None, e_batch: float | None) -> float | None:
    """Dataset-derived intensity scale `s = sqrt(nphotons / E_batch[sum_xy |Psi|^2])`.

    `None` unless `nphotons >= 0` and `e_batch > 0` are finite.
    """
    nphotons, e_batch = finite_or_none(nphotons), finite_or_none(e_batch)
    if nphotons is None or e_batch is None or nphotons < 0 or e_batch <= 0:
        return None
    with np.errstate(all="ignore"):
        return finite_or_none(np.sqrt(np.float64(nphotons) / e_batch))


def fallback_scale(nphotons: float | None, N: float | None) -> float | None:
    """Closed-form fallback intensity scale `s = sqrt(nphotons) / (N / 2)`.

    `None` unless `nphotons >= 0` and `N > 0` are finite.
    """
    nphotons, N = finite_or_none(nphotons), finite_or_none(N)
    if nphotons is None or N is None or nphotons < 0 or N <= 0:
        return None
    with np.errstate(all="ignore"):
        return finite_or_none(np.sqrt(np.float64(nphotons)) / (N / 2.0))


def e_batch_intensity(X: Any) -> float | None:
    """Mean per-pattern intensity `E_batch[sum_xy |X|^2]`.

    Axes 1 and 2 are a diffraction pattern's y and x; every other index
    (sample, and the gridsize**2 channel axis of grouped data) is one pattern,
    as in PtychoPINN's `normalize_data`. A 1-d or 2-d array holds one flattened
    pattern per row. The mean runs over the patterns whose sum is finite;
    `None` for an empty array or when no pattern sum is finite.
    """
    array = np.atleast_1d(numeric_array(X))
    if array.size == 0:
        return None
    with np.errstate(all="ignore"):
        intensity = np.abs(array).astype(np.float64) ** 2
        if intensity.ndim >= 3:
            per_pattern = intensity.sum(axis=(1, 2)).ravel()
        else:
            per_pattern = intensity.reshape(array.shape[0], -1).sum(axis=1)
        per_pattern = per_pattern[np.isfinite(per_pattern)]
        return finite_or_none(per_pattern.mean()) if per_pattern.size else None


def compare_scales(
    nphotons: float | None,
    N: float | None,
    e_batch: float | None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """Compare the dataset-derived intensity scale with the closed-form fallback.

    `dataset = sqrt(nphotons / e_batch)`, `fallback = sqrt(nphotons) / (N/2)`,
    `delta = dataset - fallback`, `ratio = dataset / fallback` and
    `assumed_intensity = (N/2)^2` (the per-sample intensity the fallback
    assumes). `direction` is "consistent" when `|ratio - 1| <= tolerance`,
    "smaller" when the dataset scale is smaller (the data has a higher mean
    intensity than assumed, so predictions may be overscaled) and "larger"
    (lower intensity, predictions may be underscaled); `sentence` says so in
    words. Undefined entries are `None`, with `reason`.
    """
    dataset = dataset_scale(nphotons, e_batch)
    fallback = fallback_scale(nphotons, N)
    N_value = finite_or_none(N)
    with np.errstate(all="ignore"):
        assumed = finite_or_none(np.float64(N_value / 2.0) ** 2) if N_value is not None and N_value > 0 else None
    result = {
        "dataset": dataset,
        "fallback": fallback,
        "delta": None,
        "ratio": None,
        "assumed_intensity": assumed,
        "tolerance": float(tolerance),
        "direction": None,
        "sentence": None,
        "reason": None,
    }
    if dataset is None or fallback is None or fallback == 0:
        missing = []
        if dataset is None:
            missing.append("the dataset-derived scale needs nphotons >= 0 and E_batch > 0")
        if fallback is None or fallback == 0:
            missing.append("the fallback scale needs nphotons > 0 and N > 0")
        result["reason"] = "; ".join(missing)
        return result
    ratio = finite_or_none(dataset / fallback)
    result.update(delta=finite_or_none(dataset - fallback), ratio=ratio)
    if ratio is None:
        result["reason"] = "dataset / fallback overflows"
    elif abs(ratio - 1.0) <= tolerance:
        result["direction"] = "consistent"
        result["sentence"] = (
            "The dataset-derived scale matches the fallback within tolerance: the data's "
            "mean intensity is consistent with the assumed (N/2)²."
        )
    elif ratio < 1:
        result["direction"] = "smaller"
        result["sentence"] = (
            "The dataset-derived scale is **smaller** than the fallback, meaning the raw "
            "diffraction has higher average intensity than assumed → predictions may be overscaled."
        )
    else:
        result["direction"] = "larger"
        result["sentence"] = (
            "The dataset-derived scale is **larger** than the fallback, meaning the raw "
            "diffraction has lower average intensity than assumed → predictions may be underscaled."
        )
    return result


def scale_application(scaled_input: Any, configured_scale: float, tolerance: float = 0.25) -> dict | None:
    """Whether the intensity scale was applied once to a batch of scaled inputs.

    PtychoPINN normalizes X so that E[sum_xy X^2] = (N/2)^2 and feeds the
    model `intensity_scale * X`, which its `IntensityScaler` divides by the
    scale again. The scaled input then has mean pattern intensity (N/2)^2;
    off by a factor scale^-2 it was divided twice, by scale^2 never divided.

    Args:
        scaled_input: the `IntensityScaler` layer's output, (batch, N, N, ...).
        configured_scale: the configured intensity scale (> 0).
        tolerance: how far from an exact power of the scale still counts.

    Returns:
        None when the input has no positive intensity; otherwise
        {"observed", "expected", "off_by", "verdict"}: `off_by` is the
        exponent k with observed = expected * scale^(2k) (0.0 for a scale of
        1), `verdict` "divided_twice" (k near -1), "multiplied_twice" (k near
        1) or None.
    """
    scaled = np.asarray(scaled_input)
    expected = (scaled.shape[1] / 2.0) ** 2
    observed = float(np.mean(np.sum(np.abs(scaled.astype(np.float64)) ** 2, axis=(1, 2))))
    if not observed > 0:
        return None
    off_by = math.log(observed / expected) / (2.0 * math.log(configured_scale)) if configured_scale != 1 else 0.0
    verdict = None
    if abs(off_by + 1) < tolerance:
        verdict = "divided_twice"
    elif abs(off_by - 1) < tolerance:
        verdict = "multiplied_twice"
    return {"observed": observed, "expected": expected, "off_by": off_by, "verdict": verdict}


def log_scale_state(
    raw: float | None,
    configured_scale: float | None,
    trainable: bool | None,
    configured_trainable: bool | None,
) -> dict:
    """State of the intensity scaler's `log_scale` against the configuration.

    `exp = exp(raw)` (the effective scale), `delta = exp - configured_scale`,
    `ratio = exp / configured_scale` (`None` when undefined or the configured
    scale is 0). `trainable` and `configured_trainable` are passed through.
    """
    raw = finite_or_none(raw)
    configured = finite_or_none(configured_scale)
    with np.errstate(all="ignore"):
        effective = finite_or_none(np.exp(np.float64(raw))) if raw is not None else None
    delta = ratio = None
    if effective is not None and configured is not None:
        delta = finite_or_none(effective - configured)
        ratio = finite_or_none(effective / configured) if configured != 0 else None
    return {
        "raw": raw,
        "exp": effective,
        "trainable": trainable,
        "configured_scale": configured,
        "configured_trainable": configured_trainable,
        "delta": delta,
        "ratio": ratio,
    }


def _float_or_nan(value: Any) -> float:
    """`float(value)`, or NaN when it is not a number (e.g. None)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _series(values: Iterable[Any] | None) -> np.ndarray:
    """A history list as float64 (None and non-numbers become NaN)."""
    return np.array([_float_or_nan(v) for v in (values or [])], dtype=np.float64)


def _series_range(values: Iterable[Any] | None) -> dict:
    """`last` (raw last value, may be non-finite; None when empty) and finite min/max."""
    series = _series(values)
    finite = series[np.isfinite(series)]
    return {
        "last": float(series[-1]) if series.size else None,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "has_nan": bool(series.size and not np.isfinite(series).all()),
    }


MOVEMENT_DEFINITION = (
    "|w·(L_last − L_first)| / Σ_j |w_j·(L_j,last − L_j,first)|, each weighted component's change since its "
    "first value over the sum of those changes; no additive constant a loss drops (the Poisson NLL drops "
    "one) changes it, and it is never negative"
)
"""The definition of the loss components' shares, in words (the report states it under its table)."""


def movement_shares(
    first: Mapping[str, Any],
    current: Mapping[str, Any],
    weights: Mapping[str, float],
) -> dict:
    """Each weighted component's movement since `first`, and its share of the loss's movement.

    For a component with weight `w`: `change = w * (current - first)` and
    `share = |change| / sum_j |change_j|` over the components of `weights`.
    An additive constant in a loss (PtychoPINN's Poisson NLL drops one that
    depends on the data, making the total large and negative) cancels in the
    change, so no share depends on it, and a share is never negative. A
    component of weight 0 does not move the loss (`change = 0`).

    Shares are defined only when every weighted component has a finite first
    and current value and at least one moved; otherwise `shares` is empty
    and `reason` says why. `dominant` is the component that moved the loss
    most, with `ratio_vs_next = |change| / |next change|` (`None`, with
    `ratio_reason`, when the next did not move).

    Returns:
        {"changes": {name: w * (current - first)} (finite ones only),
         "shares": {name: share}, "reason": str | None,
         "dominant": {"name", "change", "next", "ratio_vs_next", "ratio_reason"} | None}
    """
    changes: dict[str, float] = {}
    missing = []
    for name, weight in weights.items():
        weight = finite_or_none(weight)
        if weight == 0.0:
            changes[name] = 0.0
            continue
        a, b = finite_or_none(first.get(name)), finite_or_none(current.get(name))
        change = None
        if weight is not None and a is not None and b is not None:
            change = finite_or_none(weight * (b - a))  # Python floats overflow to inf, never raise
        if change is None:
            missing.append(name)
        else:
            changes[name] = change
    result = {"changes": changes, "shares": {}, "reason": None, "dominant": None}
    if not weights:
        result["reason"] = "no weighted loss component"
        return result
    if missing:
        result["reason"] = f"{', '.join(missing)} not finite at the first or the last value"
        return result
    moved = finite_or_none(sum(abs(c) for c in changes.values()))
    if moved is None:
        result["reason"] = "the movement overflows"
        return result
    if moved == 0:
        result["reason"] = "no component moved"
        return result
    result["shares"] = {name: abs(change) / moved for name, change in changes.items()}
    ranked = sorted(changes, key=lambda name: abs(changes[name]), reverse=True)
    top = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    ratio, ratio_reason = None, "no other component" if runner_up is None else None
    if runner_up is not None:
        if changes[runner_up] == 0:
            ratio_reason = "the next did not move"
        else:
            ratio = finite_or_none(abs(changes[top]) / abs(changes[runner_up]))
            ratio_reason = None if ratio is not None else "ratio overflows"
    result["dominant"] = {"name": top, "change": changes[top], "next": runner_up,
                          "ratio_vs_next": ratio, "ratio_reason": ratio_reason}
    return result


def loss_composition(
    history: Mapping[str, Sequence[Any]],
    loss_weights: Mapping[str, float] | None,
    total_key: str = "loss",
) -> dict:
    """Break the total loss down into its weighted output losses.

    Components are the names of `loss_weights` followed by the other
    training keys of `history` that end in `_loss` (no `val_` keys). For each
    component with first epoch value `v0`, final value `v` and weight `w`:
    `weighted = w * v` (the raw weighted value), `change = w * (v - v0)` and
    `share` = its share of the loss's movement from the first to the last
    epoch (`movement_shares`; `MOVEMENT_DEFINITION`), which no additive
    constant a loss drops can change. Shares are `None` with `share_reason`
    (e.g. "needs two epochs", "no component moved") when undefined; a
    component whose weight is unknown has no share ("weight unknown").
    `residual = total_final - sum(weighted)` is what the outputs do not
    explain (regularization losses, running-mean effects); `None` unless every
    weighted term is defined. `dominant` is the component whose weighted
    value moved most, with `ratio_vs_next = |change| / |next change|`; it is
    `None` when a weighted component's final value is non-finite or the
    shares are undefined, and `dominant_reason` says why. `inactive` lists
    components with `|v| <= INACTIVE_THRESHOLD` or `w == 0`; `hints`
    explains known ones. `learning_rate` comes from the `lr` or
    `learning_rate` history.

    Returned `final_raw` values are the last logged values as they are
    (NaN/Inf included, a measured fact); every other number is finite or None.
    """
    history = dict(history or {})
    weights = dict(loss_weights or {})
    names = list(weights) + sorted(
        key for key in history
        if key.endswith("_loss") and not key.startswith("val_") and key != total_key and key not in weights
    )
    total = _series_range(history.get(total_key))
    total_final = finite_or_none(total["last"])
    if total_key in history:
        epochs = len(history[total_key])
    else:
        epochs = max((len(v) for v in history.values()), default=0)

    known = {name: weights[name] for name in names if finite_or_none(weights.get(name)) is not None}
    firsts = {name: (list(history.get(name) or []) or [None])[0] for name in known}
    lasts = {name: (list(history.get(name) or []) or [None])[-1] for name in known}
    movement = movement_shares(firsts, lasts, known)
    if not known:
        share_reason = "no component with a known weight"
    elif max((len(history.get(name) or []) for name in known), default=0) < 2:
        share_reason = "needs two epochs"
        movement = {"changes": {}, "shares": {}, "reason": share_reason, "dominant": None}
    else:
        share_reason = movement["reason"]

    components = []
    for name in names:
        values = _series_range(history.get(name))
        final = finite_or_none(values["last"])
        weight = finite_or_none(weights.get(name))
        weighted = finite_or_none(weight * final) if weight is not None and final is not None else None
        share = movement["shares"].get(name)
        components.append({
            "name": name,
            "first": finite_or_none((list(history.get(name) or []) or [None])[0]),
            "final_raw": values["last"],
            "final": final,
            "weight": weight,
            "weighted": weighted,
            "change": movement["changes"].get(name),
            "share": share,
            "share_reason": None if share is not None else ("weight unknown" if weight is None else share_reason),
            "has_nan": values["has_nan"],
            "inactive": (final is not None and abs(final) <= INACTIVE_THRESHOLD) or weight == 0,
        })

    residual, residual_reason = None, None
    if total_final is None:
        residual_reason = "total loss is non-finite" if total["last"] is not None else "no total loss logged"
    elif not components or any(c["weighted"] is None for c in components):
        residual_reason = "a component's weighted value is undefined"
    else:
        residual = finite_or_none(total_final - sum(c["weighted"] for c in components))

    dominant, dominant_reason = movement["dominant"], share_reason
    nonfinite = [c["name"] for c in components
                 if c["final"] is None and c["final_raw"] is not None and c["weight"] not in (None, 0.0)]
    if nonfinite:  # a NaN/Inf term outweighs every finite one: naming a finite one would mislead
        dominant, dominant_reason = None, f"{', '.join(nonfinite)} non-finite"

    inactive = [c["name"] for c in components if c["inactive"]]
    lr_key = next((key for key in ("lr", "learning_rate") if key in history), None)
    learning_rate = None
    if lr_key is not None:
        lr = _series_range(history[lr_key])
        learning_rate = {"key": lr_key, "last": finite_or_none(lr["last"]), "min": lr["min"], "max": lr["max"]}

    return {
        "epochs": epochs,
        "total": {"final_raw": total["last"], "final": total_final, "min": total["min"],
                  "max": total["max"], "has_nan": total["has_nan"]},
        "components": components,
        "share_reason": share_reason,
        "residual": residual,
        "residual_reason": residual_reason,
        "dominant": dominant,
        "dominant_reason": None if dominant else dominant_reason,
        "inactive": inactive,
        "hints": {name: INACTIVE_HINTS[name] for name in inactive if name in INACTIVE_HINTS},
        "learning_rate": learning_rate,
    }


def split_total_rows(rows: Mapping[str, np.ma.MaskedArray], weights: Mapping,
                     total_key: str = "loss") -> tuple[dict, np.ma.MaskedArray]:
    """Weighted values and the residual of rows of values: {name: masked [n]}, a masked entry a value not there.

    Args:
        rows: {name: masked [n]} holding the total and the components.
        weights: {component name: loss weight}.

    Returns:
        (weighted, residual): {name: weight * value} (masked where the value
        is) and per row `total - sum(weighted)`, i.e. what the components do
        not explain (regularization losses), masked unless the total and
        every weighted value there are finite and one at least is there.
        Shares are not of the total (a loss that drops a constant, as the
        Poisson NLL does, makes the total meaningless as a denominator): see
        `movement_shares`.
    """
    weighted = {name: rows[name] * weights[name] for name in weights if name in rows}
    total = rows.get(total_key)
    if total is None or not weighted:
        size = len(next(iter(rows.values()))) if rows else 0
        return weighted, np.ma.masked_all(size)
    present = np.stack([~np.ma.getmaskarray(value) for value in weighted.values()])
    data = np.stack([np.ma.getdata(value) for value in weighted.values()])
    with np.errstate(invalid="ignore", over="ignore"):
        defined = (~np.ma.getmaskarray(total) & np.isfinite(np.ma.getdata(total)) & present.any(axis=0)
                   & np.all(np.isfinite(data) | ~present, axis=0))
        residual = np.ma.getdata(total) - np.where(present, data, 0.0).sum(axis=0)
    return weighted, np.ma.masked_array(residual, mask=~defined)


def movement_share_rows(first: Mapping[str, Any], rows: Mapping[str, np.ma.MaskedArray],
                        weights: Mapping[str, float]) -> dict:
    """`movement_shares(first, row, weights)["shares"]` for many rows at once.

    Args:
        first: {name: value} at the first point of the movement.
        rows: {name: masked [n]}, a masked entry being a value not there.
        weights: {component name: weight}.

    Returns:
        {name: masked [n]}: each component's share in each row, masked in
        the rows where `movement_shares` defines none (empty if `weights` is).
    """
    if not weights:
        return {}
    size = len(next(iter(rows.values())))
    defined = np.ones(size, bool)
    changes = {}
    with np.errstate(invalid="ignore", over="ignore"):
        for name, weight in weights.items():
            weight = finite_or_none(weight)
            if weight == 0.0:
                changes[name] = np.zeros(size)
                continue
            start, row = finite_or_none(first.get(name)), rows.get(name)
            if weight is None or start is None or row is None:
                return {name: np.ma.masked_all(size) for name in weights}
            change = weight * (np.ma.getdata(row) - start)
            defined &= ~np.ma.getmaskarray(row) & np.isfinite(change)
            changes[name] = np.abs(change)
        moved = np.sum(list(changes.values()), axis=0)
        defined &= np.isfinite(moved) & (moved > 0)
        return {name: np.ma.masked_array(change / np.where(defined, moved, 1.0), mask=~defined)
                for name, change in changes.items()}


def _paired(pred: Any, truth: Any, transform) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 (pred, truth) restricted to pairs where both are finite."""
    pred_array, truth_array = transform(pred), transform(truth)
    if pred_array.shape != truth_array.shape:
        raise ValueError(f"prediction shape {pred_array.shape} != truth shape {truth_array.shape}")
    pred_flat, truth_flat = pred_array.ravel(), truth_array.ravel()
    valid = np.isfinite(pred_flat) & np.isfinite(truth_flat)
    return pred_flat[valid], truth_flat[valid]


def _errors(residuals: np.ndarray) -> tuple[float | None, float | None]:
    """(MAE, RMSE) of residuals: mean(|r|), sqrt(mean(r^2)); None when empty or overflowing."""
    if residuals.size == 0:
        return None, None
    with np.errstate(all="ignore"):
        return (finite_or_none(np.mean(np.abs(residuals))),
                finite_or_none(np.sqrt(np.mean(residuals ** 2))))


def _percentiles(values: np.ndarray) -> dict:
    """mean, median, p05, p95 (linear interpolation) of a non-empty array."""
    with np.errstate(all="ignore"):
        p05, median, p95 = np.percentile(values, [5, 50, 95])
        return {"mean": finite_or_none(np.mean(values)), "median": finite_or_none(median),
                "p05": finite_or_none(p05), "p95": finite_or_none(p95)}


def scaling_stats(pred: Any, truth: Any) -> dict:
    """Which scalar, multiplied onto the prediction, best matches the truth.

    Pairs where both are finite are *comparable*; of those, pairs with
    `truth != 0` and `pred != 0` are *valid* for the per-pixel ratio
    `r = truth / pred`. `mean`, `median`, `p05`, `p95` and `count` describe
    `r` over the valid pixels. Candidate scalars `c` are those four
    statistics and the least-squares fit `c = sum(pred*truth) / sum(pred^2)`
    (over comparable pairs); each is scored by `MAE = mean|c*pred - truth|`
    and `RMSE = sqrt(mean((c*pred - truth)^2))` over the comparable pairs.
    `best` is the candidate with the lowest MAE (first in `SCALAR_MODES` on
    ties); `baseline` scores `pred - truth` itself (c = 1). With no valid
    pixel all ratio statistics and candidates are `None` and `reason` says
    why. Complex inputs are compared by modulus.
    """
    pred_ok, truth_ok = _paired(pred, truth, _as_real_array)
    valid = (truth_ok != 0) & (pred_ok != 0)
    with np.errstate(all="ignore"):
        baseline_mae, baseline_rmse = _errors(pred_ok - truth_ok)
    result = {
        "count": int(valid.sum()),
        "mean": None, "median": None, "p05": None, "p95": None,
        "candidates": [{"mode": mode, "value": None, "mae": None, "rmse": None} for mode in SCALAR_MODES],
        "best": None,
        "baseline": {"mae": baseline_mae, "rmse": baseline_rmse, "count": int(pred_ok.size)},
        "reason": None,
    }
    if not valid.any():
        if pred_ok.size == 0:
            result["reason"] = "no pixel where both prediction and truth are finite"
        else:
            result["reason"] = "no pixel where both prediction and truth are finite and nonzero"
        return result
    with np.errstate(all="ignore"):
        ratios = truth_ok[valid] / pred_ok[valid]
        ratios = ratios[np.isfinite(ratios)]
        least_squares = finite_or_none(np.sum(pred_ok * truth_ok) / np.sum(pred_ok ** 2))
    if ratios.size == 0:
        result["reason"] = "every truth/prediction ratio overflows"
        return result
    result.update(_percentiles(ratios))
    values = {**{f"ratio_{k}": result[k] for k in ("mean", "median", "p05", "p95")},
              "least_squares": least_squares}
    for candidate in result["candidates"]:
        scalar = values[candidate["mode"]]
        if scalar is not None:
            with np.errstate(all="ignore"):
                scaled_residuals = scalar * pred_ok - truth_ok
            candidate["value"] = scalar
            candidate["mae"], candidate["rmse"] = _errors(scaled_residuals)
    scored = [c for c in result["candidates"] if c["mae"] is not None]
    result["best"] = dict(min(scored, key=lambda c: c["mae"])) if scored else None
    return result


def undefined_bias(reason: str) -> dict:
    """A bias summary (as `phase_bias` returns) with every statistic `None` and the `reason`."""
    keys = ("mean", "median", "p05", "p95", "mae", "rmse", "max_abs")
    return {"count": 0, **dict.fromkeys(keys), "reason": reason}


def _difference_stats(differences: np.ndarray, empty_reason: str) -> dict:
    """mean, median, p05, p95, MAE, RMSE, max_abs and count of differences."""
    if differences.size == 0:
        return undefined_bias(empty_reason)
    mae, rmse = _errors(differences)
    return {
        "count": int(differences.size),
        **_percentiles(differences),
        "mae": mae,
        "rmse": rmse,
        "max_abs": finite_or_none(np.max(np.abs(differences))),
        "reason": None,
    }


def pearson_r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation `cov(x, y) / (std(x) std(y))`, clipped to [-1, 1].

    `None` when fewer than 2 pairs, either side is constant, or it overflows.
    """
    with np.errstate(all="ignore"):
        if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        dx, dy = x - x.mean(), y - y.mean()
        r = finite_or_none(np.sum(dx * dy) / np.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))
    return None if r is None else min(1.0, max(-1.0, r))


def amplitude_bias(pred_amp: Any, truth_amp: Any) -> dict:
    """Bias of predicted amplitude against the truth.

    Over pairs where both are finite, `d = pred - truth`: `mean`, `median`,
    `p05`, `p95` of `d`, `MAE = mean|d|`, `RMSE = sqrt(mean(d^2))`,
    `max_abs = max|d|`, `count`, and `pearson_r` between pred and truth
    (`None` when fewer than 2 pairs or either side is constant). Everything
    is `None` with a `reason` when there is no finite pair. Complex inputs
    are compared by modulus.
    """
    pred_ok, truth_ok = _paired(pred_amp, truth_amp, _as_real_array)
    with np.errstate(all="ignore"):
        differences = pred_ok - truth_ok
    result = _difference_stats(differences, "no pixel where both prediction and truth are finite")
    result["pearson_r"] = pearson_r(pred_ok, truth_ok)
    return result


def wrap_phase(phase: Any) -> np.ndarray:
    """Wrap angles into (-pi, pi]: `w = pi - ((pi - phase) mod 2pi)`."""
    with np.errstate(all="ignore"):
        wrapped = np.pi - np.mod(np.pi - np.asarray(phase, dtype=np.float64), 2 * np.pi)
    return np.where(wrapped <= -np.pi, wrapped + 2 * np.pi, wrapped)


def _as_phase_array(a: Any) -> np.ndarray:
    """Phase array as float64; complex input becomes its angle."""
    array = numeric_array(a)
    return np.angle(array) if array.dtype.kind == "c" else np.asarray(array, dtype=np.float64)


def phase_bias(pred_phase: Any, truth_phase: Any) -> dict:
    """Bias of predicted phase against the truth, modulo 2pi.

    As `amplitude_bias` (without `pearson_r`) on the wrapped differences
    `d = wrap(pred - truth)` in (-pi, pi]. Complex inputs are compared by
    their angle.
    """
    pred_ok, truth_ok = _paired(pred_phase, truth_phase, _as_phase_array)
    with np.errstate(all="ignore"):
        differences = wrap_phase(pred_ok - truth_ok)
    differences = differences[np.isfinite(differences)]
    return _difference_stats(differences, "no pixel where both predicted and true phase are finite")
