"""The probe inputs of the callbacks that run the model on a small batch of their own.

`StageStatistics` and `IntensityScaleMonitor` take `probe_inputs` from the
user; these turn them into numpy and check them against the model before
any training step, so that a wrong probe fails at once, with a message
that says what to pass.
"""

import numpy as np

from .. import stats


def to_numpy(value):
    """A tensor, variable or array-like as a numpy array."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def symbolic_dtype(tensor):
    """The numpy dtype of a Keras 3 or tf_keras symbolic tensor."""
    return np.dtype(getattr(tensor.dtype, "name", tensor.dtype))


def probe_batch(probe_inputs):
    """The probe inputs as numeric numpy arrays (dict or list kept as such).

    Raises:
        ValueError: an input is not numeric, holds no sample, or the inputs
            have different batch sizes.
    """
    def numeric(value, key):
        return stats.numeric_array(to_numpy(value), f"probe_inputs[{key!r}]")

    if isinstance(probe_inputs, dict):
        batch = {key: numeric(value, key) for key, value in probe_inputs.items()}
        arrays = list(batch.values())
    elif isinstance(probe_inputs, (list, tuple)):
        batch = [numeric(value, index) for index, value in enumerate(probe_inputs)]
        arrays = batch
    else:
        batch = stats.numeric_array(to_numpy(probe_inputs), "probe_inputs")
        arrays = [batch]
    if not arrays or any(a.ndim == 0 or a.shape[0] == 0 for a in arrays):
        raise ValueError("probe_inputs must hold at least one sample for every model input")
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"probe_inputs have different batch sizes: {sorted(sizes)}")
    return batch


def batch_size(batch):
    """Number of samples of a `probe_batch` result."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else (
        batch[0] if isinstance(batch, list) else batch)
    return int(first.shape[0])


def check_probe_inputs(model, batch):
    """ValueError, before any training step, when `batch` does not fit the model's inputs.

    Checks that every model input is given, with the model's shape (batch
    axis aside), and that no complex array is fed where the model takes real
    numbers (Keras would silently drop the imaginary part).
    """
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        return
    names = [tensor.name.split(":")[0] for tensor in inputs]
    if isinstance(batch, dict):
        missing = [name for name in names if name not in batch]
        if missing:
            raise ValueError(f"probe_inputs has no entry for the model input(s) {missing}; "
                             f"it has {sorted(batch)}")
        arrays = [batch[name] for name in names]
    else:
        arrays = batch if isinstance(batch, list) else [batch]
        if len(arrays) != len(inputs):
            raise ValueError(f"probe_inputs holds {len(arrays)} array(s), the model takes {len(inputs)} "
                             f"input(s): {names}")
    for name, tensor, array in zip(names, inputs, arrays):
        expected = symbolic_dtype(tensor)
        if array.dtype.kind == "c" and expected.kind != "c":
            raise ValueError(
                f"probe_inputs[{name!r}] is complex ({array.dtype}) but the model input {name!r} is "
                f"{expected}: Keras would silently drop the imaginary part; pass the real values "
                "(e.g. the diffraction amplitude) the model is trained on")
        shape = tuple(tensor.shape)[1:]
        if array.ndim != len(shape) + 1 or any(
                want is not None and want != got for want, got in zip(shape, array.shape[1:])):
            wanted = ", ".join("any" if d is None else str(d) for d in shape)
            raise ValueError(f"probe_inputs[{name!r}] has shape {array.shape}; the model input {name!r} "
                             f"takes (batch, {wanted})")
