"""Writing the failing step of a training to `<run_dir>/nan_forensics/`, and reading it back.

The folder holds everything needed to replay the step offline:

- `manifest.json`: the guard's event, what each file holds, which samples of
  the batch are non-finite or extreme, what was dropped to respect the size
  limit and why;
- `batch.npz`: the batch as Keras fed it to `train_step` (inputs, targets,
  sample weights; its nesting is in the manifest);
- `weights_before.npz`: the model's variables before the failing step;
- `optimizer_state.npz`: the optimizer's variables after the failing step;
- `model.keras`: the model (`model.save`) holding the weights before the
  failing step, when it can be saved.

The folder is written once and atomically: it is built in a temporary
directory beside it and renamed into place.
"""

import datetime
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from .._keras import IS_LEGACY, keras
from ..callbacks.scale_discovery import find_log_scale
from ..callbacks.loss_discovery import compiled_loss_weights, loss_origins
from ..callbacks.variables import assign_weights, current_weights, model_variables, same_variable_names
from ..record import atomic_write_text, decode_nonfinite, encode_nonfinite, to_builtin, umask_mode
from ..run_dir import (FORENSICS_BATCH as BATCH_FILE, FORENSICS_FOLDER as FOLDER, FORENSICS_MANIFEST as MANIFEST,
                       FORENSICS_MODEL as MODEL_FILE, FORENSICS_OPTIMIZER as OPTIMIZER_FILE,
                       FORENSICS_WEIGHTS as WEIGHTS_FILE)

FORMAT_VERSION = 1

EXTREME_FACTOR = 100.0
"""A sample is extreme in an array when its largest |value| exceeds this many times the batch's median of those."""

_NPZ_OVERHEAD = 512
"""Bytes an array adds to an .npz file beyond its data (zip and .npy headers), for size estimates."""


class ForensicsError(ValueError):
    """A nan_forensics folder is missing, incomplete or malformed."""


# ------------------------------------------------------------- nested arrays
def flatten_arrays(tree, path):
    """([(key, array)], skeleton) of a nested structure of arrays (dicts, lists, tuples, None).

    The skeleton is JSON: a leaf is its key (`path/...`), a dict is
    `{"dict": {...}}`, a list or tuple `{"list": [...]}`, None is null.
    """
    if tree is None:
        return [], None
    if isinstance(tree, dict):
        leaves, items = [], {}
        for key, value in tree.items():
            sub_leaves, items[str(key)] = flatten_arrays(value, f"{path}/{key}")
            leaves += sub_leaves
        return leaves, {"dict": items}
    if isinstance(tree, (list, tuple)):
        leaves, items = [], []
        for index, value in enumerate(tree):
            sub_leaves, skeleton = flatten_arrays(value, f"{path}/{index}")
            leaves += sub_leaves
            items.append(skeleton)
        return leaves, {"list": items}
    return [(path, np.asarray(tree))], path


def unflatten_arrays(skeleton, arrays):
    """Inverse of `flatten_arrays`: the nested structure, with leaves looked up in `arrays`."""
    if skeleton is None:
        return None
    if isinstance(skeleton, str):
        return arrays[skeleton]
    if "dict" in skeleton:
        return {key: unflatten_arrays(value, arrays) for key, value in skeleton["dict"].items()}
    return [unflatten_arrays(value, arrays) for value in skeleton["list"]]


def split_batch(batch):
    """(x, y, sample_weight) of a batch as Keras feeds `train_step`: x, (x,), (x, y) or (x, y, sample_weight)."""
    return keras.utils.unpack_x_y_sample_weight(tuple(batch) if isinstance(batch, list) else batch)


def batch_size(batch):
    """Number of samples: the length of the first array of the inputs."""
    leaves, _ = flatten_arrays(split_batch(batch)[0], "x")
    if not leaves or leaves[0][1].ndim == 0:
        raise ForensicsError("the batch has no input array with a sample axis")
    return int(leaves[0][1].shape[0])


def nonfinite_samples(array, size):
    """Indices of the `size` samples (first axis) of `array` holding NaN or Inf (complex: either part)."""
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] != size or array.dtype.kind not in "fc" or array.size == 0:
        return []
    return np.flatnonzero(~np.isfinite(array).reshape(size, -1).all(axis=1)).tolist()


def sample_flags(tree, path, size):
    """{leaf key: {"nonfinite": [...], "extreme": [...]}} sample indices of a nested structure of arrays.

    A sample is non-finite in an array when one of its values is NaN or Inf
    (complex: either part); extreme when its largest finite |value| exceeds
    `EXTREME_FACTOR` times the median over the batch of those largest values.
    Arrays without a sample axis of `size` are left out.
    """
    flags = {}
    for key, array in flatten_arrays(tree, path)[0]:
        if array.ndim == 0 or array.shape[0] != size or array.dtype.kind not in "iufc" or array.size == 0:
            continue
        magnitude = np.abs(array).astype(np.float64).reshape(size, -1)
        largest = np.where(np.isfinite(magnitude), magnitude, 0.0).max(axis=1)
        median = float(np.median(largest))
        extreme = largest > EXTREME_FACTOR * median if median > 0 else np.zeros(size, dtype=bool)
        flags[key] = {"nonfinite": nonfinite_samples(array, size), "extreme": np.flatnonzero(extreme).tolist()}
    return flags


def flagged_samples(flags):
    """Sorted sample indices flagged non-finite or extreme in any array of `sample_flags` output."""
    return sorted({i for entry in flags.values() for kind in ("nonfinite", "extreme") for i in entry[kind]})


def take_samples(tree, indices, size):
    """The structure with every array of sample axis `size` restricted to `indices`."""
    def take(array):
        if array is None:
            return None
        array = np.asarray(array)
        return array[indices] if array.ndim and array.shape[0] == size else array

    return tf.nest.map_structure(take, tree)


# ------------------------------------------------------------------ writing
def _npz_bytes(arrays):
    return sum(np.asarray(array).nbytes + _NPZ_OVERHEAD for _, array in arrays)


def _save_npz(path, arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **{key: np.asarray(array) for key, array in arrays})
        handle.flush()
        os.fsync(handle.fileno())


def _save_model(model, path, weights_before, variables):
    """Saves the model holding the weights before the step; returns None, or why it could not."""
    current = current_weights(variables)
    try:
        if weights_before:
            assign_weights(variables, weights_before)
        model.save(path)
        return None
    except Exception as error:  # noqa: BLE001 - a model that cannot be saved is reported, not raised
        return f"model.save failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
    finally:
        assign_weights(variables, current)


_LIBRARY_MODULES = ("keras", "tf_keras", "tensorflow", "builtins")


def custom_object_modules(model):
    """The modules, other than Keras's and TensorFlow's, that define the model's layers and loss functions.

    Recorded in the manifest so that a fresh process knows what registers
    the saved model's custom objects.
    """
    objects = [model] + list(getattr(model, "layers", []))
    for attribute in ("_compile_loss", "compiled_loss"):
        container = getattr(model, attribute, None)
        losses = getattr(container, "_user_losses", None)
        if losses is not None:
            objects += list(losses.values()) if isinstance(losses, dict) else (
                list(losses) if isinstance(losses, (list, tuple)) else [losses])
    modules = set()
    for value in objects:
        module = getattr(value, "__module__", None) or getattr(type(value), "__module__", None)
        if isinstance(value, str) or not module or module.split(".")[0] in _LIBRARY_MODULES:
            continue
        modules.add(module)
    return sorted(modules)


def _samples_that_matter(flags, involved_samples):
    """Samples flagged in the batch, plus those the replay found involved (inputs, loss or gradients)."""
    return sorted(set(flagged_samples(flags)) | set(involved_samples or ())) or [0]


def _weights_entry(weights):
    return [(f"{index:04d}", value) for index, (_, value) in enumerate(weights)]


def write_forensics(run_dir, model, batch, weights_before, optimizer_state, event, max_bytes=256 * 2**20,
                    involved_samples=None, variables=None, config=None):
    """Writes `<run_dir>/nan_forensics/` for the failing step, once and atomically.

    Args:
        run_dir: the run directory.
        model: the model (saved as `model.keras` holding `weights_before`,
            when it can be saved; its own weights are left as they were).
        batch: the failing step's batch as numpy, the way Keras fed
            `train_step`: `(x, y, sample_weight)` or shorter, x a dict or list
            of inputs, y a list, dict or array; None if it was not captured.
        weights_before: `[(path, array)]` of the model's variables before
            the failing step (paths as `model_variables` gives them; the
            manifest keeps every name of each, `same_variable_names`).
        optimizer_state: `[(name, array)]` of the optimizer's variables after
            the step, or None.
        event: the guard's event dict (JSON-safe), stored in the manifest.
        max_bytes: size limit of the folder. Over it, the optimizer state is
            dropped first, then the batch keeps only the samples that matter
            (non-finite or extreme, or `involved_samples`), then the
            weights file when the saved model holds them, then the model,
            the weights and the batch. The manifest (a few kB) is always
            written and says what was dropped.
        involved_samples: batch indices the replay found involved (its
            `samples`), kept with the flagged ones when the batch is cut.
        variables: `model_variables(model, log_scale)`, the variables
            `weights_before` names; found here if None.
        config: the run's configuration (`RunRecord.config`), kept in the
            manifest for setting up a fresh process (`replay --setup`).

    Returns:
        The folder's path. If it exists already nothing is written.

    Example:

    ```python
    folder = write_forensics("runs/gs2", model, (x, y, None), weights_before, None, event)
    replay_folder(folder)["op"]   # e.g. "Log"
    ```
    """
    folder = os.path.join(os.fspath(run_dir), FOLDER)
    if os.path.exists(folder):
        return folder
    os.makedirs(run_dir, exist_ok=True)
    weights_before = list(weights_before or [])
    tmp = tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=run_dir)
    try:
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it private (0700)
        if variables is None:
            variables = model_variables(model, find_log_scale(model).variable)
        manifest = _build(tmp, model, batch, weights_before, optimizer_state, event, max_bytes, involved_samples,
                          variables)
        manifest["config"] = dict(config or {})
        manifest["losses"] = {"origins": loss_origins(model), "weights": compiled_loss_weights(model)}
        if manifest["weights_before"]:
            names = same_variable_names(model, variables)
            manifest["weights_before"]["aliases"] = {name: names.get(name, [name]) for name, _ in weights_before}
        text = json.dumps(encode_nonfinite(to_builtin(manifest, "manifest")), indent=2, allow_nan=False)
        atomic_write_text(os.path.join(tmp, MANIFEST), text + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):
                raise  # another writer got there first otherwise: its folder stands
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build(tmp, model, batch, weights_before, optimizer_state, event, max_bytes, involved_samples, variables):
    """Writes the data files into `tmp` within `max_bytes`; returns the manifest."""
    model_path = os.path.join(tmp, MODEL_FILE)
    model_reason = _save_model(model, model_path, weights_before, variables)
    sizes = {"model": os.path.getsize(model_path) if model_reason is None else 0,
             "weights_before": _npz_bytes(weights_before) if weights_before else 0,
             "optimizer_state": _npz_bytes(optimizer_state) if optimizer_state else 0}
    batch_info = {"file": None, "structure": None, "batch_size": None, "samples": None, "flags": {},
                  "reason": "the batch was not captured" if batch is None else None}
    leaves = []
    if batch is not None:
        size = batch_size(batch)
        x, y, sample_weight = split_batch(batch)
        flags = {**sample_flags(x, "x", size), **sample_flags(y, "y", size)}
        leaves, structure = flatten_arrays({"x": x, "y": y, "sample_weight": sample_weight}, "batch")
        batch_info.update(structure=structure, batch_size=size, samples=list(range(size)), flags=flags)
        sizes["batch"] = _npz_bytes(leaves)
    dropped = []

    def over():
        return sum(sizes.values()) > max_bytes

    def drop(part, reason):
        dropped.append({"part": part, "bytes": sizes.pop(part), "reason": reason})

    limit = f"the folder would exceed max_bytes={max_bytes}"
    if over() and sizes.get("optimizer_state"):
        drop("optimizer_state", limit)
    if over() and batch is not None and batch_info["batch_size"] > 1:
        keep = _samples_that_matter(batch_info["flags"], involved_samples)
        if len(keep) < batch_info["batch_size"]:
            trimmed = take_samples({"x": x, "y": y, "sample_weight": sample_weight}, keep,
                                   batch_info["batch_size"])
            leaves = flatten_arrays(trimmed, "batch")[0]
            dropped.append({"part": "samples", "bytes": sizes["batch"] - _npz_bytes(leaves),
                            "reason": f"{limit}: kept only the samples that matter {keep}"})
            sizes["batch"] = _npz_bytes(leaves)
            batch_info["samples"] = keep
    if over() and sizes.get("weights_before") and sizes["model"]:
        if sum(sizes.values()) - sizes["weights_before"] <= max_bytes:
            drop("weights_before", f"{limit}; {MODEL_FILE} holds the same weights")
    for part in ("model", "weights_before", "batch"):
        if over() and sizes.get(part):
            drop(part, limit)

    if "model" not in sizes or model_reason is not None:
        if os.path.exists(model_path):
            os.remove(model_path)
    if sizes.get("weights_before"):
        _save_npz(os.path.join(tmp, WEIGHTS_FILE), _weights_entry(weights_before))
    if sizes.get("optimizer_state"):
        _save_npz(os.path.join(tmp, OPTIMIZER_FILE), _weights_entry(optimizer_state))
    if sizes.get("batch"):
        _save_npz(os.path.join(tmp, BATCH_FILE), leaves)
        batch_info["file"] = BATCH_FILE
    elif batch is not None:
        batch_info["reason"] = f"dropped: {limit}"

    def file_entry(part, filename, names):
        if sizes.get(part):
            return {"file": filename, "names": names}
        return None

    return {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "event": event,
        "keras_version": keras.__version__,
        "legacy_keras": IS_LEGACY,
        "tensorflow_version": tf.__version__,
        "model": {"name": model.name, "file": MODEL_FILE if sizes.get("model") else None,
                  "modules": custom_object_modules(model),
                  "holds": "the weights before the failing step",
                  "reason": model_reason or (None if sizes.get("model") else f"dropped: {limit}")},
        "batch": batch_info,
        "weights_before": file_entry("weights_before", WEIGHTS_FILE, [name for name, _ in weights_before]),
        "optimizer_state": file_entry("optimizer_state", OPTIMIZER_FILE,
                                      [name for name, _ in optimizer_state or []]),
        "max_bytes": int(max_bytes),
        "bytes": int(sum(sizes.values())),
        "dropped": dropped,
    }


# ------------------------------------------------------------------ reading
def find_folder(path):
    """The nan_forensics folder given itself or the run directory holding it.

    Raises:
        ForensicsError: neither is a nan_forensics folder.
    """
    path = os.fspath(path)
    for candidate in (path, os.path.join(path, FOLDER)):
        if os.path.isfile(os.path.join(candidate, MANIFEST)):
            return candidate
    if not os.path.exists(path):
        raise ForensicsError(f"{path}: no such file or directory")
    raise ForensicsError(f"{path}: no {FOLDER}/{MANIFEST} in it (did the NaN guard run with forensics=True?)")


def read_manifest(folder):
    """The folder's manifest as a dict.

    Raises:
        ForensicsError: it is missing or not valid JSON.
    """
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = decode_nonfinite(json.load(handle))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8, not JSON
        raise ForensicsError(f"{path}: cannot read the manifest: {type(error).__name__}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ForensicsError(f"{path}: not a nan_forensics manifest of format version {FORMAT_VERSION}")
    return manifest


def file_in_folder(folder, filename):
    """The path of `filename` in `folder`; ForensicsError for a name that is not a plain file name there.

    A manifest from someone else could name an absolute path or climb out
    of the folder (`../model.keras`): nothing outside the folder is read.
    """
    if (not isinstance(filename, str) or filename in ("", ".", "..") or os.path.isabs(filename)
            or os.path.basename(filename) != filename or (os.altsep and os.altsep in filename)):
        raise ForensicsError(f"{folder}: the manifest names {filename!r}, which is not a file of the folder; "
                             "nothing outside the folder is read")
    return os.path.join(folder, filename)


def _load_npz(folder, filename):
    path = file_in_folder(folder, filename)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ForensicsError(f"{path}: cannot read it: {error}") from None


def read_batch(folder, manifest):
    """The saved batch as `(x, y, sample_weight)`.

    Raises:
        ForensicsError: the folder holds no batch (the manifest says why).
    """
    info = manifest.get("batch") or {}
    if not info.get("file"):
        raise ForensicsError(f"{folder}: no batch saved ({info.get('reason') or 'no reason recorded'})")
    tree = unflatten_arrays(info["structure"], _load_npz(folder, info["file"]))
    return tree["x"], tree["y"], tree["sample_weight"]


def read_weights(folder, manifest):
    """`[(name, array)]` of the weights before the failing step, or None when not saved."""
    info = manifest.get("weights_before")
    if not info:
        return None
    arrays = _load_npz(folder, info["file"])
    return [(name, arrays[f"{index:04d}"]) for index, name in enumerate(info["names"])]


def read_weight_names(manifest):
    """{path: [every name of that variable]} recorded beside the weights ({} when the manifest has none)."""
    aliases = (manifest.get("weights_before") or {}).get("aliases")
    if not isinstance(aliases, dict):
        return {}
    return {name: [alias for alias in names if isinstance(alias, str)]
            for name, names in aliases.items() if isinstance(name, str) and isinstance(names, list)}
