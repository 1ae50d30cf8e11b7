"""Data-path stages, as `StageStatistics` takes them, and the panels it shows: numpy only.

A stage is one named array along PtychoPINN's data path (raw diffraction,
grouped, normalized, container X, prediction, truth): given as an array, a
layer of the model or a callable. `parse_stages` checks the specs before any
training step; `side_by_side` builds the prediction | truth images.
"""

import math
import re

import numpy as np

from . import stats
from .record import CONTAINER_STAGE, PREDICTION_STAGE, TRUTH_STAGE

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_NAMES = ("ratio", "invariant")
_SOURCE_KEYS = ("array", "layer", "fn")
_SPEC_KEYS = {"name", "label", "source", *_SOURCE_KEYS}

AMPLITUDE_STAGES = (CONTAINER_STAGE, PREDICTION_STAGE, TRUTH_STAGE)
"""Stage names the report reads as real diffraction amplitudes: complex values are refused."""

HISTOGRAM_MAX_VALUES = 1_000_000
"""At most this many values (an even stride through the array) go into one histogram."""

NO_VALUES = np.zeros(0)
"""No values: an empty histogram or a stage that gave nothing usable."""


def refuse_complex_amplitude(stage_name, what, dtype):
    if np.dtype(dtype).kind == "c" and stage_name in AMPLITUDE_STAGES:
        raise ValueError(
            f"stage {stage_name!r}: {what} is complex ({dtype}), but the report reads {stage_name!r} as a "
            "real diffraction amplitude (its mean enters the stage ratios); pass the amplitude "
            "(np.abs of the complex field), or give a complex object as truth= to compare with the prediction")


def check_values(where, values, what, stage_name=None):
    """`values` as a numpy array; ValueError naming `where` when empty, not numeric, or
    complex for a stage the report reads as an amplitude."""
    array = stats.numeric_array(values, f"{where}: {what}", allow_empty=False)
    refuse_complex_amplitude(stage_name, what, array.dtype)
    return array


def histogram_values(array):
    """Finite values of `array` (of |array| when complex) for a histogram, subsampled if huge."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > HISTOGRAM_MAX_VALUES:
        flat = flat[::math.ceil(flat.size / HISTOGRAM_MAX_VALUES)]
    if np.iscomplexobj(flat):
        flat = np.abs(flat)
    flat = flat.astype(np.float64)
    return flat[np.isfinite(flat)]


def _display(panel):
    """A 2-D panel scaled to [0, 1] (min-max over its finite values; non-finite pixels are 0)."""
    panel = np.asarray(panel, dtype=np.float64)
    finite = np.isfinite(panel)
    out = np.zeros_like(panel)
    if finite.any():
        low, high = panel[finite].min(), panel[finite].max()
        if high > low:
            out[finite] = (panel[finite] - low) / (high - low)
    return out


def side_by_side(pred, truth, max_images):
    """(k, H, 2W + 1, 1) float32 images: prediction | truth of the first channel of k samples."""
    def panels(a):
        a = np.asarray(a)
        if a.ndim == 4:
            a = a[..., 0]
        elif a.ndim == 2:
            a = a[None]
        elif a.ndim != 3:
            return None
        return a[:max_images]

    pred, truth = panels(pred), panels(truth)
    if pred is None or truth is None or pred.shape[0] == 0:
        return None
    images = []
    for p, t in zip(pred, truth):
        gap = np.ones((p.shape[0], 1))
        images.append(np.concatenate([_display(p), gap, _display(t)], axis=1))
    return np.stack(images)[..., None].astype(np.float32)


class Stage:
    """One validated stage spec."""

    def __init__(self, name, label, source, kind, value):
        self.name, self.label, self.source, self.kind, self.value = name, label, source, kind, value


def _parse_stage(spec, index):
    if isinstance(spec, (tuple, list)):
        if len(spec) == 4:
            name, label, source, array = spec
        elif len(spec) == 2:
            (name, array), label, source = spec, None, None
        else:
            raise ValueError(
                f"stage #{index}: a tuple spec must be (name, array) or (name, label, source, array), "
                f"got {len(spec)} items")
        spec = {"name": name, "label": label, "source": source, "array": array}
    if not isinstance(spec, dict):
        raise ValueError(f"stage #{index}: a spec must be a dict or a tuple, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"stage #{index}: 'name' must be a non-empty string of letters, digits, '_', '.' or '-' "
            f"(it becomes a TensorBoard tag), got {name!r}")
    if name in _RESERVED_NAMES:
        raise ValueError(f"stage {name!r}: the names {_RESERVED_NAMES} are reserved for the ratio tags")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"stage {name!r}: unknown key(s) {unknown}; a spec holds 'name', 'label', 'source' and "
            "exactly one of 'array', 'layer', 'fn'")
    given = [key for key in _SOURCE_KEYS if spec.get(key) is not None]
    if len(given) != 1:
        found = f"got {given}" if given else "got none"
        raise ValueError(f"stage {name!r}: give exactly one of 'array', 'layer' or 'fn' ({found})")
    kind = given[0]
    value = spec[kind]
    if kind == "array":
        value = check_values(f"stage {name!r}", value, "the array", stage_name=name)
    elif kind == "layer":
        if not isinstance(value, str) or not value:
            raise ValueError(f"stage {name!r}: 'layer' must be a layer name (a string), got {value!r}")
    elif not callable(value):
        raise ValueError(f"stage {name!r}: 'fn' must be callable as fn(model), got {type(value).__name__}")
    label, source = spec.get("label"), spec.get("source")
    for key, text in (("label", label), ("source", source)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"stage {name!r}: {key!r} must be a string, got {type(text).__name__}")
    return Stage(name, label or name, source, kind, value)


def parse_stages(stages):
    """The validated `Stage`s of a list of specs (see `StageStatistics`).

    Raises:
        ValueError: not a list, a malformed spec, or a name given twice.
    """
    if isinstance(stages, dict) or not isinstance(stages, (list, tuple)):
        raise ValueError(f"stages must be a list of stage specs, got {type(stages).__name__}")
    parsed = [_parse_stage(spec, index) for index, spec in enumerate(stages)]
    seen = set()
    for stage in parsed:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is registered twice; stage names must be unique")
        seen.add(stage.name)
    return parsed


def phase_reason(prediction_dtype, truth_dtype, prediction_output):
    """Why the phase cannot be compared (a real prediction or truth), or None when both are complex."""
    if np.dtype(prediction_dtype).kind == "c" and np.dtype(truth_dtype).kind == "c":
        return None
    if np.dtype(prediction_dtype).kind == "c":
        return f"truth is real ({truth_dtype}) while the prediction {prediction_output!r} is complex"
    return f"the prediction {prediction_output!r} is real ({prediction_dtype}): no phase to compare"
