"""The probe inputs of the callbacks that run the model on a small batch of their own.

`IntensityScaleMonitor`, `StageStatistics` and `PhysicsHealth` take
`probe_inputs` from the user; these turn them into numpy and check them
against the model before any training step, so that a wrong probe fails at
once, with a message that says what to pass. `LayerProbe` evaluates the
layers they ask for, through one sub-model for all of them.
"""

import difflib

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


def _batch_leaves(batch):
    return list(batch.values()) if isinstance(batch, dict) else (batch if isinstance(batch, list) else [batch])


def _as_list(outputs):
    if isinstance(outputs, dict):
        return list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def layer_output(model, layer_name, where):
    """The symbolic output of `model`'s layer `layer_name`; ValueError starting with `where` if there is none.

    The error names the layers that come close, so that a typo is found at
    train begin, before any step.
    """
    try:
        layer = model.get_layer(layer_name)
    except (ValueError, KeyError):
        names = [layer.name for layer in model.layers]
        close = difflib.get_close_matches(layer_name, names, n=3, cutoff=0.6)
        shown = (close + [n for n in names if n not in close])[:8]
        more = f", ... ({len(names)} layers)" if len(names) > len(shown) else ""
        hint = f"did you mean {', '.join(repr(n) for n in close)}? " if close else ""
        raise ValueError(
            f"{where}: the model {model.name!r} has no layer named {layer_name!r}; {hint}"
            f"available layer names: {', '.join(shown)}{more}") from None
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{where}: layer {layer_name!r} has no single output to evaluate "
            f"(is it used more than once in the model?): {error}") from None
    outputs = _as_list(output)
    if len(outputs) != 1:
        raise ValueError(f"{where}: layer {layer_name!r} has {len(outputs)} outputs; "
                         "register a layer with one output, or use 'fn'")
    return outputs[0]


_ON_MODEL = "_ptycho_callbacks_probe_functions"
"""Attribute of a model holding {(layer names, one input): the compiled sub-model}, for every run of the model."""


def _sub_model(model, outputs, one_input):
    from .._keras import keras

    return keras.Model(model.inputs[0] if one_input else model.inputs, outputs, name="ptycho_callbacks_probe")


class LayerProbe:
    """The outputs of named layers on a probe batch: one sub-model for all of a run's callbacks.

    The callbacks that evaluate layers on a probe batch (the scale monitor's
    double-scaling check, the stage statistics, the physics health) declare
    the layers they will ask for; the first evaluation builds ONE functional
    sub-model over all of them, and the callbacks asking at the same step on
    the same batch share one forward pass.

    Example:
    >>> probe = LayerProbe()
    >>> probe.declare(["pred_amplitude", "trimmed_obj"])
    >>> probe.evaluate(model, batch, step=0, names=["trimmed_obj"])["trimmed_obj"].shape
    """

    def __init__(self):
        self._names = []
        self._built = None  # (model, names) the function was built for
        self._function = None
        self._cached = None  # (step, batch leaves, {name: numpy})

    def declare(self, names):
        """Adds layer names the sub-model must give (before the first evaluation, to build it once)."""
        self._names += [name for name in names if name not in self._names]

    def evaluate(self, model, batch, step, names, where="probe"):
        """{name: numpy output} of the layers `names` on `batch` at optimizer step `step`.

        Raises:
            ValueError: a layer the model does not have, or a model without
                symbolic inputs (a subclassed model), with `where` first.
        """
        self.declare(names)
        leaves = _batch_leaves(batch)
        cached = self._cached
        if (cached is not None and cached[0] == step and len(cached[1]) == len(leaves)
                and all(a is b for a, b in zip(cached[1], leaves)) and set(names) <= set(cached[2])
                and self._built == (model, tuple(self._names))):
            return {name: cached[2][name] for name in names}
        self._build(model, batch, where)
        outputs = _as_list(self._function(batch))
        values = {name: to_numpy(value) for name, value in zip(self._names, outputs)}
        self._cached = (step, leaves, values)
        return {name: values[name] for name in names}

    def _build(self, model, batch, where):
        if self._built == (model, tuple(self._names)):
            return
        if not getattr(model, "inputs", None):
            raise ValueError(
                f"{where}: layers are evaluated through a functional sub-model; the model "
                f"{getattr(model, 'name', model)!r} has no symbolic inputs (subclassed model?)")
        outputs = [layer_output(model, name, where) for name in self._names]
        one_input = len(model.inputs) == 1 and not isinstance(batch, (dict, list))
        if getattr(model, "run_eagerly", False):
            sub_model = _sub_model(model, outputs, one_input)
            self._function = lambda batch: sub_model(batch, training=False)
        else:
            functions = vars(model).get(_ON_MODEL)
            if functions is None:
                functions = {}
                # object.__setattr__ keeps it out of Keras's attribute tracking (and of saved models).
                object.__setattr__(model, _ON_MODEL, functions)
            key = (tuple(self._names), one_input)
            if key not in functions:
                import tensorflow as tf

                sub_model = _sub_model(model, outputs, one_input)
                # Traced once per model: an eager call of a functional model dispatches every layer from Python.
                functions[key] = tf.function(lambda batch: sub_model(batch, training=False))
            self._function = functions[key]
        self._built = (model, tuple(self._names))
        self._cached = None
