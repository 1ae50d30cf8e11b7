"""PtychoPINN's own objects turned into the arguments of `default_callbacks`: numpy only.

A PtychoPINN training script already holds everything the report needs:
`ptycho.params.cfg` (photons, patch size, scale, loss weights), the training
`PtychoDataContainer`, and, when it made them itself, the grouped data dict of
`RawData.generate_grouped_data` and the `RawData`. `from_ptychopinn` reads
them and returns the `config`, `stages` and `probe` of `default_callbacks`:

>>> from ptycho import params
>>> callbacks = default_callbacks(model, "runs/gs2", **from_ptychopinn(params.cfg, train_data))

PtychoPINN is never imported: the objects are read by their names only
(mapping access for `params.cfg` and the grouped dict, attributes for the
container and `RawData`), so fakes with the same names work as well, and
TensorFlow tensors are read through numpy. Large arrays are never copied
whole: the stage statistics read an evenly strided sample of at most
`max_samples` samples, the probe batch `probe_size` samples, and
`E_batch[sum_xy |X|^2]` is summed over the whole container X in chunks.
"""

import math
import warnings
from collections.abc import Mapping

import numpy as np

from . import stats
from .record import CONTAINER_STAGE, PREDICTION_STAGE, TRUTH_STAGE
from .suite import Probe

LOSS_WEIGHT_KEYS = {"realspace_weight": "trimmed_obj_loss", "mae_weight": "intensity_scaler_inv_loss",
                    "nll_weight": "pred_intensity_loss"}
"""`params.cfg` loss weight -> the Keras loss it weights (PtychoPINN compiles the three losses in this order)."""

PREDICTION_LAYER = "pred_diff_channels"
"""PtychoPINN's layer of the predicted diffraction amplitude in the units of X (before `intensity_scaler_inv`)."""

E_BATCH_CHUNK = 1024
"""Samples of container X read at once when summing `E_batch[sum_xy |X|^2]` over the whole set."""


def _cfg_mapping(cfg):
    """`params.cfg` as a mapping; the `ptycho.params` module itself is accepted for its `cfg`."""
    if not isinstance(cfg, Mapping) and isinstance(getattr(cfg, "cfg", None), Mapping):
        cfg = cfg.cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"cfg must be PtychoPINN's params.cfg (a dict), got {type(cfg).__name__}")
    return cfg


def _number(cfg, key, kind=float, positive=True):
    value = cfg[key]
    try:
        number = np.asarray(value)
        if number.size != 1 or number.dtype.kind not in "iufb":
            raise ValueError
        number = number.reshape(()).item()
    except (TypeError, ValueError):
        raise ValueError(f"params.cfg[{key!r}] must be a number, got {value!r}") from None
    if kind is int:
        if float(number) != int(number):
            raise ValueError(f"params.cfg[{key!r}] must be a whole number, got {value!r}")
        number = int(number)
    else:
        number = float(number)
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"params.cfg[{key!r}] must be a {'positive ' if positive else ''}finite number, "
                         f"got {value!r}")
    return number


def config_from_params(cfg):
    """The report's `config` from PtychoPINN's `params.cfg`, without reading any data.

    Keeps the JSON numbers the report reads: `nphotons`, `N`, `gridsize`,
    `intensity_scale` and `intensity_scale_trainable` (from
    `intensity_scale.trainable`) and `batch_size` (an HParams column), when present, and `loss_weights`
    ({logged Keras loss: weight}) from `realspace_weight`, `mae_weight` and
    `nll_weight`, the weights PtychoPINN compiles its three losses with.
    Everything else (`probe`, paths, ...) is left out.

    Raises:
        TypeError: `cfg` is not a mapping.
        KeyError: `nphotons`, `N` or `gridsize` is missing (named).
        ValueError: a value is not a number of the right kind (named).
    """
    cfg = _cfg_mapping(cfg)
    missing = [key for key in ("nphotons", "N", "gridsize") if key not in cfg]
    if missing:
        raise KeyError(f"params.cfg has no {', '.join(repr(k) for k in missing)}: set them (ptycho.params.set, "
                       "or the TrainingConfig that updates params.cfg) before building the callbacks")
    config = {"nphotons": _number(cfg, "nphotons"), "N": _number(cfg, "N", int),
              "gridsize": _number(cfg, "gridsize", int)}
    if cfg.get("intensity_scale") is not None:
        config["intensity_scale"] = _number(cfg, "intensity_scale")
    if cfg.get("intensity_scale.trainable") is not None:
        config["intensity_scale_trainable"] = bool(cfg["intensity_scale.trainable"])
    if cfg.get("batch_size") is not None:
        config["batch_size"] = _number(cfg, "batch_size", int)
    weights = {loss: _number(cfg, key, positive=False) for key, loss in LOSS_WEIGHT_KEYS.items()
               if cfg.get(key) is not None}
    if weights:
        config["loss_weights"] = weights
    return config


# --- reading arrays -------------------------------------------------------------------------------------------


def _attribute(obj, names, what, required=True):
    """The first of obj.<names> that is set, preferring PtychoDataContainer's numpy copy `_<name>_np`
    (its `.X` makes a tensor of the whole set)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        for attribute in (f"_{name}_np", name):
            value = getattr(obj, attribute, None)
            if value is not None:
                return value
    if required:
        wanted = (f"no attribute {names[0]!r}" if len(names) == 1
                  else "neither attribute " + " nor ".join(repr(n) for n in names))
        raise AttributeError(f"{what} has {wanted} (it is a {type(obj).__name__})")
    return None


def _shape(array, what):
    shape = getattr(array, "shape", None)
    if shape is None:
        array = np.asarray(array)
        shape = array.shape
    try:
        return tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{what} has no known shape ({shape})") from None


def _check_shape(array, what, expected):
    """The shape of `array`; ValueError when it is not `expected` (None: any length on that axis)."""
    shape = _shape(array, what)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        wanted = "(" + ", ".join("n" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{what} has shape {shape}, expected {wanted}")
    if shape[0] == 0:
        raise ValueError(f"{what} holds no sample (shape {shape})")
    return shape


def _strided(count, limit):
    """A slice of at most `limit` samples evenly spread over `count` (basic slicing: numpy, tensors, h5py)."""
    return slice(0, None, max(1, math.ceil(count / max(1, limit))))


def _numpy(value, what, allow_complex=False):
    return stats.numeric_array(np.asarray(value), what, allow_complex=allow_complex, allow_empty=False)


def _e_batch(X, count):
    """E over patterns of sum_xy |X|^2, over the whole X, read `E_BATCH_CHUNK` samples at a time."""
    total, patterns = 0.0, 0
    for start in range(0, count, E_BATCH_CHUNK):
        chunk = np.asarray(X[start:start + E_BATCH_CHUNK], dtype=np.float64)
        sums = np.square(chunk).sum(axis=(1, 2)).ravel()
        sums = sums[np.isfinite(sums)]
        total, patterns = total + float(sums.sum()), patterns + sums.size
    return total / patterns if patterns else None


def _gain(grouped_diffraction, X_full):
    """The one gain `normalize_data` applied: least squares of X_full against the grouped diffraction."""
    a, b = (np.abs(x).astype(np.float64).ravel() for x in (grouped_diffraction, X_full))
    keep = np.isfinite(a) & np.isfinite(b)
    denominator = float(np.dot(a[keep], a[keep]))
    return stats.finite_or_none(float(np.dot(a[keep], b[keep])) / denominator) if denominator > 0 else None


# --- the whole adapter --------------------------------------------------------------------------------------


def from_ptychopinn(cfg, container, grouped=None, raw=None, *, probe_size=8, max_samples=512,
                    prediction_layer=PREDICTION_LAYER, truth_fn=None):
    """The `config`, `stages` and `probe` of `default_callbacks`, read from PtychoPINN's objects.

    `default_callbacks(model, log_dir, **from_ptychopinn(params.cfg, train_data, grouped, raw))`
    gives the report everything PtychoPINN knows: the configuration, the
    dataset-derived scale, every stage of the data path, the prediction
    against the ground truth and the photon budget.

    What comes from where:

    - `config`: `config_from_params(cfg)`, plus `e_batch_intensity`, the
      mean over all patterns of container X of `sum_xy X**2` (the
      denominator of the dataset-derived scale
      `s = sqrt(nphotons / E_batch)`, as PtychoPINN's `scale_nphotons`
      computes it for `norm_Y_I`: every channel is one pattern), and, with
      `grouped`, `normalize_gain`, the gain `normalize_data` applied (least
      squares of `X_full` against `diffraction`).
    - `stages`, in the order of the data path: `raw_diffraction`
      (`raw.diff3d`), `grouped_diffraction` (`grouped['diffraction']`),
      `grouped_X_full` (`grouped['X_full']`), `container_X`
      (`container.X`), each on an evenly strided sample of at most
      `max_samples` samples; then `prediction` (the layer
      `prediction_layer` on the probe batch) and `truth` (the measured X of
      the probe batch: what that prediction should reproduce). Stages whose
      object is not given are left out.
    - `probe`: `Probe(inputs, truth, counts)` on `probe_size` samples of the
      container spread over it: `inputs = [X * intensity_scale,
      coords_nominal]` as PtychoPINN's `prepare_inputs` makes them,
      `counts = (X * intensity_scale)**2` (the `pred_intensity` target of
      `prepare_outputs`) and `truth = Y_I * exp(1j * Y_phi)`, the complex
      object patches, compared with the model's `trimmed_obj`.

    Args:
        cfg: `ptycho.params.cfg` (a dict; the `ptycho.params` module is
            accepted too). Needs `nphotons`, `N`, `gridsize` and, for the
            probe batch, `intensity_scale` (PtychoPINN sets it before it
            builds the model).
        container: the training `PtychoDataContainer` (`X`,
            `coords_nominal` or `coords`; `Y_I` and `Y_phi` for the truth).
            Its numpy copies (`_X_np`, ...) are read when it has them, so that
            no tensor of the whole set is made.
        grouped: the dict `RawData.generate_grouped_data` returned
            (`diffraction`, `X_full`), or None.
        raw: the `RawData` (`diff3d`), or None.
        probe_size: samples of the probe batch the model is evaluated on at
            every logging epoch (keep it small).
        max_samples: at most this many samples of each array enter its
            stage statistics.
        prediction_layer: the model's layer of the predicted diffraction
            amplitude in the units of X; None leaves the prediction and truth
            stages out. PtychoPINN's (and the bundled stand-in's) is
            `pred_diff_channels`.
        truth_fn: None, or `truth_fn(Y, coords)` -> the ground truth the
            model's `trimmed_obj` is compared with, from the probe batch's
            complex patches `Y` `(n, N, N, gridsize**2)` and `coords_nominal`.
            PtychoPINN's `trimmed_obj` has one channel when gridsize > 1 (the
            patches put together): its `prepare_outputs` centres `Y_I` with
            `center_channels(Y_I, coords)[..., :1]`, and so must this.

    Returns:
        `{"config": dict, "stages": list, "probe": Probe}`, the keyword
        arguments of `default_callbacks`. A container whose `Y_I` is all
        ones and `Y_phi` all zeros (PtychoPINN's placeholder when the data
        has no ground truth) gives no truth, with a warning.

    Raises:
        TypeError: `cfg` or `grouped` is not a mapping.
        KeyError: a needed `params.cfg` or `grouped` key is missing (named).
        AttributeError: the container or `raw` lacks a needed attribute (named).
        ValueError: an array has another shape than `N` and `gridsize` say
            (named, with the shape expected), or numbers of the wrong kind.
    """
    for name, value in (("probe_size", probe_size), ("max_samples", max_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if truth_fn is not None and not callable(truth_fn):
        raise ValueError(f"truth_fn must be callable as truth_fn(Y, coords), got {type(truth_fn).__name__}")
    config = config_from_params(cfg)
    N, channels = config["N"], config["gridsize"] ** 2
    pattern = (N, N, channels)
    stages = []

    if raw is not None:
        diff3d = _attribute(raw, "diff3d", "raw (PtychoPINN's RawData)")
        count = _check_shape(diff3d, "raw.diff3d", (None, N, N))[0]
        stages.append(dict(name="raw_diffraction", label="Raw diffraction", source="RawData.diff3d",
                           array=_numpy(diff3d[_strided(count, max_samples)], "raw.diff3d", allow_complex=True)))

    if grouped is not None:
        if isinstance(grouped, tuple):
            raise TypeError("grouped is a tuple: with create_split the data callback returns (dict, train_frac); "
                            "pass the dict")
        if not isinstance(grouped, Mapping):
            raise TypeError(f"grouped must be the dict RawData.generate_grouped_data returns, "
                            f"got {type(grouped).__name__}")
        missing = [key for key in ("diffraction", "X_full") if grouped.get(key) is None]
        if missing:
            raise KeyError(f"grouped has no {', '.join(repr(k) for k in missing)} (the dict "
                           f"RawData.generate_grouped_data returns holds both)")
        count = _check_shape(grouped["diffraction"], "grouped['diffraction']", (None, *pattern))[0]
        _check_shape(grouped["X_full"], "grouped['X_full']", (count, *pattern))
        rows = _strided(count, max_samples)
        diffraction = _numpy(grouped["diffraction"][rows], "grouped['diffraction']", allow_complex=True)
        X_full = _numpy(grouped["X_full"][rows], "grouped['X_full']", allow_complex=True)
        stages.append(dict(name="grouped_diffraction", label="Grouped diffraction",
                           source="RawData.generate_grouped_data", array=diffraction))
        stages.append(dict(name="grouped_X_full", label="Grouped X (normalized)", source="normalize_data",
                           array=X_full))
        gain = _gain(diffraction, X_full)
        if gain is not None:
            config["normalize_gain"] = gain

    what = "container (PtychoPINN's PtychoDataContainer)"
    X = _attribute(container, "X", what)
    count = _check_shape(X, "container.X", (None, *pattern))[0]
    stages.append(dict(name=CONTAINER_STAGE, label="Container X", source="PtychoDataContainer.X",
                       array=_numpy(X[_strided(count, max_samples)], "container.X")))
    e_batch = _e_batch(X, count)
    if e_batch is not None:
        config["e_batch_intensity"] = e_batch

    rows = _strided(count, probe_size)
    X_probe = _numpy(X[rows], "container.X")
    probe = _probe(config, container, X_probe, count, rows, truth_fn)
    if prediction_layer is not None:
        stages.append(dict(name=PREDICTION_STAGE, label="Prediction", source=f"model: {prediction_layer}",
                           layer=prediction_layer))
        stages.append(dict(name=TRUTH_STAGE, label="Truth (measured X)",
                           source="PtychoDataContainer.X (probe batch)", array=X_probe))
    return {"config": config, "stages": stages, "probe": probe}


def _probe(config, container, X_probe, count, rows, truth_fn):
    """`Probe` of `probe_size` samples spread over the container, as `prepare_inputs`/`prepare_outputs` see them."""
    if "intensity_scale" not in config:
        raise KeyError("params.cfg has no 'intensity_scale', needed for the probe batch (prepare_inputs feeds "
                       "X * intensity_scale): PtychoPINN sets it before building the model (train_pinn.train); "
                       "build the callbacks after the model")
    what = "container (PtychoPINN's PtychoDataContainer)"
    coords = _attribute(container, ("coords_nominal", "coords"), what)
    _check_shape(coords, "container.coords_nominal", (count, 1, 2, config["gridsize"] ** 2))
    scaled = (X_probe * config["intensity_scale"]).astype(np.float32)
    coords_batch = _numpy(coords[rows], "container.coords_nominal").astype(np.float32)
    truth = _truth(container, (count, *X_probe.shape[1:]), rows, coords_batch, truth_fn)
    return Probe(inputs=[scaled, coords_batch], truth=truth, counts=np.square(scaled))


def _truth(container, x_shape, rows, coords, truth_fn):
    what = "container (PtychoPINN's PtychoDataContainer)"
    Y_I = _attribute(container, "Y_I", what, required=False)
    Y_phi = _attribute(container, "Y_phi", what, required=False)
    if Y_I is None and Y_phi is None:
        return None
    if Y_I is None or Y_phi is None:
        raise AttributeError(f"{what} has {'Y_phi' if Y_I is None else 'Y_I'} but no "
                             f"{'Y_I' if Y_I is None else 'Y_phi'}: the truth needs both")
    _check_shape(Y_I, "container.Y_I", x_shape)
    _check_shape(Y_phi, "container.Y_phi", x_shape)
    amplitude, phase = _numpy(Y_I[rows], "container.Y_I"), _numpy(Y_phi[rows], "container.Y_phi")
    if np.all(amplitude == 1) and not np.any(phase):
        warnings.warn("container.Y_I is all ones and Y_phi all zeros (PtychoPINN's placeholder when the data has "
                      "no ground truth): the prediction-vs-truth sections are left out", stacklevel=4)
        return None
    truth = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    if truth_fn is not None:
        truth = _numpy(truth_fn(truth, coords), "truth_fn(Y, coords)", allow_complex=True)
        if truth.ndim == 0 or truth.shape[0] != len(coords):
            raise ValueError(f"truth_fn(Y, coords) returned shape {truth.shape}; its first axis must be the "
                             f"{len(coords)} samples of the probe batch")
    return truth
