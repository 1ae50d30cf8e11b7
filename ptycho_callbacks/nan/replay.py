"""Replaying a failing training step to name the layer and op that first went non-finite.

`replay(model, batch)` runs one training step on the batch eagerly, forward
and backward, twice:

1. a sweep, without numeric checking: every layer's output (one functional
   sub-model over all of them), every loss component (the compiled losses
   with their compiled weights, per sample), the gradients of every weight
   and of every layer's output. The first layer whose output is non-finite,
   the first loss component, or the layer whose backward pass made the first
   non-finite gradient gives the stage and the layer; the samples whose
   values are non-finite there are the samples involved. Complex tensors
   (which TensorFlow's numeric checking skips) are checked here, both parts.
2. the same step with `tf.debugging.enable_check_numerics()` switched on
   for this replay only (restored after, also on error), and with the
   traceback filtering of Keras and TensorFlow off so the error's frames
   show the layer and the function that ran the op: it names the op (e.g.
   `Log` inside `negloglik`).

`replay_folder(folder)` does the same offline from a `nan_forensics/`
folder (`ptycho-callbacks replay RUN_DIR`, in `ptycho_callbacks.cli`).
"""

import contextlib
import importlib
import os
import re
import sys
import sysconfig
import types
import zipfile

import numpy as np
import tensorflow as tf

from .._keras import keras
from ..callbacks.loss_discovery import compiled_loss_weights, output_names, per_output
from ..callbacks.scale_discovery import find_log_scale
from ..callbacks.variables import (assign_weights, current_weights, model_variables, same_variable_names, tf_variable,
                                   variable_name)
from ..run_dir import FORENSICS_MODEL
from . import capture

MAX_GRADIENT_SAMPLES = 64
"""At a gradient-stage failure, up to this many samples are replayed one by one to find those involved."""

MAX_LISTED_LAYERS = 10
"""At most this many non-finite layers are listed in a result."""

_HEADER = re.compile(r'Detected Infinity or NaN in output (\d+) of (?:eagerly-executing|graph) op "([^"]+)"')
_COUNTS = re.compile(r"# of ([+-]?(?:Inf|NaN)) elements: (\d+)")
_LIBRARY_DIRS = tuple(os.path.dirname(module.__file__) + os.sep for module in (tf, keras, np)) + (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,)
_STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep
_PACKAGES_DIRS = (sysconfig.get_paths()["purelib"] + os.sep, sysconfig.get_paths()["platlib"] + os.sep)


# ------------------------------------------------------------------ helpers
def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _all_finite(value):
    array = _numpy(value)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def _nonfinite_samples(value, size):
    return capture.nonfinite_samples(_numpy(value), size)


def _finite_or_none(value):
    number = float(value)
    return number if np.isfinite(number) else None


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _check_numerics_enabled():
    """Whether the user had TensorFlow's numeric checking on already (then it is left on)."""
    try:
        from tensorflow.python.debug.lib import check_numerics_callback
    except ImportError:
        return False
    return hasattr(check_numerics_callback._state, "check_numerics_callback")


@contextlib.contextmanager
def numerics_checked():
    """Per-op numeric checking on, traceback filtering off; both restored on exit."""
    switches = [(tf.debugging.is_traceback_filtering_enabled, tf.debugging.enable_traceback_filtering,
                 tf.debugging.disable_traceback_filtering)]
    config = getattr(keras, "config", None)
    if hasattr(config, "is_traceback_filtering_enabled"):
        switches.append((config.is_traceback_filtering_enabled, config.enable_traceback_filtering,
                         config.disable_traceback_filtering))
    filtering = [(enable, disable) for is_enabled, enable, disable in switches if is_enabled()]
    already_checking = _check_numerics_enabled()
    # TensorFlow's error message prints the op's inputs: keep them to a few values.
    with contextlib.ExitStack() as stack:
        stack.enter_context(np.printoptions(threshold=8, edgeitems=1))
        for enable, disable in filtering:
            disable()
            stack.callback(enable)
        if not already_checking:
            tf.debugging.enable_check_numerics()
            stack.callback(tf.debugging.disable_check_numerics)
        yield


def _frames(traceback):
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def _is_user_code(filename):
    """False for TensorFlow, Keras, numpy, the standard library and this module."""
    filename = os.path.abspath(filename)
    if filename.startswith(_LIBRARY_DIRS):
        return False
    return not filename.startswith(_STDLIB_DIR) or filename.startswith(_PACKAGES_DIRS)


def _describe_check_error(error):
    """What an error of TensorFlow's numeric checking says: op, values, and the layer and function running it."""
    text = str(error)
    header = _HEADER.search(text)
    if header is None:
        return None
    counts = ", ".join(f"{count} {kind}" for kind, count in _COUNTS.findall(text))
    layer = loss = function = None
    for frame in _frames(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.layers.Layer) and not isinstance(owner, keras.Model):
            layer = owner.name
        elif isinstance(owner, keras.losses.Loss):
            loss = owner.name
        if _is_user_code(frame.f_code.co_filename):
            function = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    return {"op": header.group(2), "output": int(header.group(1)), "values": counts or None,
            "layer": layer, "loss": loss, "function": function}


def _parent_layers(layer):
    """The layers feeding `layer` (its first call), or [] when Keras does not say."""
    try:
        nodes = layer._inbound_nodes[0].parent_nodes
    except (AttributeError, IndexError):
        return []
    return [getattr(node, "operation", None) or getattr(node, "layer", None) for node in nodes]


def _layer_output(layer):
    """The layer's single symbolic output, or None (input layers, shared layers, several outputs)."""
    if isinstance(layer, keras.layers.InputLayer):
        return None
    try:
        output = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    return None if isinstance(output, (list, tuple, dict)) else output


class _Component:
    """One compiled loss term: its output, logged name, per-sample function and weight."""

    def __init__(self, index, output, name, spec, weight):
        if isinstance(spec, str):
            spec = keras.losses.get(spec)
        if isinstance(spec, keras.losses.Loss):
            self.function, self.loss_name = spec.call, spec.name
        else:
            self.function, self.loss_name = spec, getattr(spec, "__name__", type(spec).__name__)
        self.index, self.output, self.name, self.weight = index, output, name, weight

    def values(self, y_true, y_pred, sample_weight):
        """Per-element loss values (sample weights applied) and their mean, Keras's reduction."""
        y_true = tf.convert_to_tensor(y_true)
        if y_pred.dtype.is_floating and y_true.dtype != y_pred.dtype:
            y_true = tf.cast(y_true, y_pred.dtype)
        values = self.function(y_true, y_pred)
        if sample_weight is not None:
            weights = tf.cast(tf.convert_to_tensor(sample_weight), values.dtype)
            values = values * tf.reshape(weights, [-1] + [1] * (len(values.shape) - 1))
        return values, tf.reduce_mean(values)


def _components(model):
    names = output_names(model)
    spec = getattr(model, "loss", None)
    if spec is None or not names:
        raise capture.ForensicsError(f"the model {model.name!r} is not compiled with a loss: nothing to replay")
    weights = compiled_loss_weights(model)
    losses = per_output(spec, names, default=None)
    components = []
    for index, output in enumerate(names):
        if losses[output] is None:
            continue
        name = f"{output}_loss" if len(names) > 1 else "loss"
        components.append(_Component(index, output, name, losses[output], weights.get(name, 1.0)))
    return components


def _targets(y, output_names):
    if isinstance(y, dict):
        return [y.get(name) for name in output_names]
    if isinstance(y, (list, tuple)):
        return list(y) + [None] * (len(output_names) - len(y))
    return [y] + [None] * (len(output_names) - 1)


# ------------------------------------------------------------------- replay
def _sample_weights(sample_weight, output_names):
    """The sample weights of each output: Keras gives one array to every output, or one per output."""
    if sample_weight is None:
        return [None] * len(output_names)
    if isinstance(sample_weight, (dict, list, tuple)):
        return _targets(sample_weight, output_names)
    return [sample_weight] * len(output_names)


class _Replay:
    """One replay of a training step on one batch (the model's weights already set)."""

    def __init__(self, model, x, y, sample_weight):
        self.model, self.x, self.sample_weight = model, x, sample_weight
        self.size = capture.batch_size((x,))
        self.output_names = output_names(model)
        self.y = _targets(y, self.output_names)
        self.components = _components(model)
        self.trainable = list(model.trainable_variables)
        self.owner = {}
        for layer in model.layers:
            for variable in layer.trainable_weights:
                self.owner.setdefault(id(tf_variable(variable)), layer.name)
        self.sweep_layers = [layer for layer in model.layers if _layer_output(layer) is not None]
        self.sweep_model = None
        if getattr(model, "inputs", None) and self.sweep_layers:
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
            self.sweep_model = keras.Model(inputs, [_layer_output(layer) for layer in self.sweep_layers],
                                           name="nan_forensics_sweep")
        self.current = None  # (part of the step, loss component) running, for the numeric-checking pass

    # --- one step -----------------------------------------------------------

    def _forward(self, x, sweep):
        """(model outputs, {layer name: output}) of a training-mode forward pass."""
        layer_outputs = {}
        if sweep and self.sweep_model is not None:
            values = _as_list(self.sweep_model(x, training=True))
            layer_outputs = {layer.name: value for layer, value in zip(self.sweep_layers, values)}
        if all(name in layer_outputs for name in self.output_names):
            return [layer_outputs[name] for name in self.output_names], layer_outputs
        outputs = self.model(x, training=True)
        if isinstance(outputs, dict):  # a model returning {output name: tensor}
            return [outputs[name] for name in self.output_names], layer_outputs
        return _as_list(outputs), layer_outputs

    def _losses(self, outputs, y, sample_weight):
        """({component name: (per-element values, mean)}, weighted total plus regularization)."""
        losses, terms = {}, []
        weights = _sample_weights(sample_weight, self.output_names)
        for component in self.components:
            self.current = ("loss", component)
            if y[component.index] is None:
                continue
            values, mean = component.values(y[component.index], outputs[component.index], weights[component.index])
            losses[component.name] = (values, mean)
            terms.append(component.weight * mean)
        self.current = ("loss", None)
        terms += list(self.model.losses)
        if not terms:
            return losses, tf.constant(0.0)
        return losses, tf.add_n([tf.cast(term, terms[0].dtype) for term in terms])

    def _step(self, x, y, sample_weight, sweep):
        """Forward, loss and backward of one step; with `sweep`, every layer's output and its gradient too."""
        self.current = ("forward", None)
        with tf.GradientTape() as tape:
            outputs, layer_outputs = self._forward(x, sweep)
            losses, total = self._losses(outputs, y, sample_weight)
        self.current = ("gradients", None)
        sources = self.trainable + list(layer_outputs.values())
        gradients = tape.gradient(total, sources) if sources else []
        output_gradients = dict(zip(layer_outputs, gradients[len(self.trainable):]))
        return outputs, layer_outputs, losses, total, gradients[:len(self.trainable)], output_gradients

    # --- analysis -----------------------------------------------------------

    def run(self):
        outputs, layer_outputs, losses, total, variable_gradients, output_gradients = self._step(
            self.x, self.y, self.sample_weight, sweep=True)
        if not layer_outputs:  # no sweep (a subclassed model): the model's outputs stand for its layers
            layer_outputs = dict(zip(self.output_names, outputs))
        components = {}
        for component in self.components:
            if component.name in losses:
                values, mean = losses[component.name]
                components[component.name] = {
                    "value": _finite_or_none(mean), "weight": component.weight, "finite": _all_finite(values),
                    "loss": component.loss_name, "samples": _nonfinite_samples(values, self.size)}
        result = {
            "stage": "none", "layer": None, "op": None, "loss": None, "message": None,
            "batch_size": self.size, "samples": [],
            "inputs": capture.sample_flags(self.x, "x", self.size),
            "targets": capture.sample_flags(dict(zip(self.output_names, self.y)), "y", self.size),
            "nonfinite_weights": [name for name, variable in model_variables(self.model, find_log_scale(self.model).variable)
                                  if not _all_finite(variable)],
            "nonfinite_layers": [name for name, value in layer_outputs.items()
                                 if not _all_finite(value)][:MAX_LISTED_LAYERS],
            "loss_components": components,
            "total_loss": _finite_or_none(total),
            "gradient_norms": self._gradient_norms(variable_gradients),
            "check_numerics": None,
        }
        self._locate(result, layer_outputs, output_gradients, variable_gradients)
        if result["stage"] != "none":
            check = result["check_numerics"] = self._check_numerics()
            result["op"] = check.get("op")
            result["layer"] = result["layer"] or check.get("layer")
            result["loss"] = result["loss"] or check.get("loss")
        result["message"] = _message(result)
        return result

    def _gradient_norms(self, gradients):
        """[{"layer", "norm", "finite"}]: the norm of each layer's weight gradients (None when not finite)."""
        squares = {}
        for variable, gradient in zip(self.trainable, gradients):
            if gradient is None:
                continue
            layer = self.owner.get(id(tf_variable(variable)), variable_name(variable))
            values = np.abs(_numpy(tf.convert_to_tensor(gradient))).astype(np.float64)
            with np.errstate(all="ignore"):
                squares[layer] = squares.get(layer, 0.0) + float(np.sum(values ** 2))
        return [{"layer": layer, "norm": _finite_or_none(np.sqrt(square)), "finite": bool(np.isfinite(square))}
                for layer, square in squares.items()]

    def _locate(self, result, layer_outputs, output_gradients, variable_gradients):
        """Sets stage, layer, loss and samples from the sweep."""
        first_layer = next((name for name, value in layer_outputs.items() if not _all_finite(value)), None)
        if first_layer is not None:
            result.update(stage="forward", layer=first_layer,
                          samples=_nonfinite_samples(layer_outputs[first_layer], self.size))
            return
        for component in self.components:
            entry = result["loss_components"].get(component.name)
            if entry is not None and not entry["finite"]:
                result.update(stage="loss", layer=component.output, loss=component.loss_name,
                              samples=entry["samples"])
                return
        if result["total_loss"] is None:
            result.update(stage="loss", loss="total")
            return
        nonfinite_gradients = [variable for variable, gradient in zip(self.trainable, variable_gradients)
                               if gradient is not None and not _all_finite(gradient)]
        bad_outputs = {name for name, gradient in output_gradients.items()
                       if gradient is not None and not _all_finite(gradient)}
        if nonfinite_gradients or bad_outputs:
            culprit = self._backward_culprit(bad_outputs, nonfinite_gradients)
            from_loss = next((c.loss_name for c in self.components if c.output == culprit and culprit in bad_outputs),
                             None)
            result.update(stage="gradients", layer=culprit, loss=from_loss,
                          samples=self._samples_with_nonfinite_gradients())

    def _backward_culprit(self, bad_outputs, nonfinite_gradients):
        """The layer whose backward pass made the first non-finite gradient (nearest the loss).

        A layer made it when the gradient of its own output is finite but
        that of an input, or of one of its weights, is not; an output layer
        whose output gradient is non-finite got it from the loss.
        """
        for name in self.output_names:
            if name in bad_outputs:
                return name
        bad_weight_layers = {self.owner.get(id(tf_variable(v))) for v in nonfinite_gradients}
        for layer in reversed(self.sweep_layers):
            if layer.name in bad_outputs:
                continue
            parents = {parent.name for parent in _parent_layers(layer) if parent is not None}
            if parents & bad_outputs or layer.name in bad_weight_layers:
                return layer.name
        return next(iter(bad_weight_layers), None)

    def _samples_with_nonfinite_gradients(self):
        """Samples whose own step (alone in a batch) has a non-finite weight gradient."""
        whole = (self.x, self.y, self.sample_weight)
        involved = []
        for index in range(min(self.size, MAX_GRADIENT_SAMPLES)):
            x, y, sample_weight = capture.take_samples(whole, [index], self.size)
            gradients = self._step(x, y, sample_weight, sweep=False)[4]
            if any(gradient is not None and not _all_finite(gradient) for gradient in gradients):
                involved.append(index)
        return involved

    def _check_numerics(self):
        """The step again with per-op numeric checking: what TensorFlow names, or why it named nothing."""
        try:
            with numerics_checked():
                self._step(self.x, self.y, self.sample_weight, sweep=False)
        except tf.errors.InvalidArgumentError as error:
            described = _describe_check_error(error)
            if described is None:
                raise
            phase, component = self.current
            described["phase"] = phase
            if component is not None:
                described["component"] = component.name
                described["loss"] = described["loss"] or component.loss_name
            return described
        return {"reason": "TensorFlow's numeric checking found nothing: the first non-finite value is "
                          "complex (which it does not check) or appears only in the sweep"}


def _message(result):
    """One paragraph saying where the first non-finite value appeared."""
    stage, layer, check = result["stage"], result["layer"], result["check_numerics"] or {}
    op = f"`{check['op']}`" + (f" in `{check['function']}`" if check.get("function") else "") \
        if check.get("op") else None
    samples = f"samples {result['samples']}" if result["samples"] else "no single sample"
    bad_inputs = {key: entry["nonfinite"] for key, entry in result["inputs"].items() if entry["nonfinite"]}
    bad_targets = {key: entry["nonfinite"] for key, entry in result["targets"].items() if entry["nonfinite"]}
    if stage == "none":
        return ("The forward pass, the loss and the gradients are all finite on this batch with these weights: "
                "the non-finite value came from the optimizer's update (look at the learning rate and the "
                "optimizer state) or the replayed batch or weights are not those of the failing step.")
    parts = []
    if stage == "forward":
        parts.append(f"Forward pass: `{layer}` is the first layer whose output is non-finite ({samples}).")
        if result["nonfinite_weights"]:
            parts.append(f"Non-finite weights: {', '.join(f'`{n}`' for n in result['nonfinite_weights'])}.")
        for key, indices in bad_inputs.items():
            parts.append(f"The input `{key}` holds NaN/Inf in samples {indices}.")
    elif stage == "loss":
        what = (f"the loss of output `{layer}` ({result['loss']})" if layer else
                "the weighted total of the loss components (with regularization)")
        parts.append(f"Loss: the forward pass is finite, {what} is not ({samples}).")
        for key, indices in bad_targets.items():
            parts.append(f"The target `{key}` holds NaN/Inf in samples {indices}.")
    else:
        where = (f"the gradient of the loss of output `{layer}` ({result['loss']})" if result["loss"] else
                 f"the backward pass of `{layer}`")
        parts.append(f"Gradients: the forward pass and the loss are finite; {where} makes the first non-finite "
                     f"gradient ({samples}).")
    if op:
        where = f" (in the {check['phase']} pass)" if check.get("phase") != stage else ""
        values = f", {check['values']}" if check.get("values") else ""
        parts.append(f"TensorFlow's numeric checking names op {op}{where}{values}.")
    elif check.get("reason"):
        parts.append(check["reason"] + ".")
    return " ".join(parts)


def _own_train_step(model):
    """The qualified name of a `train_step` the model's class defines over Keras's, or None."""
    for cls in type(model).__mro__:
        if "train_step" in vars(cls):
            module = cls.__module__ or ""
            if module.split(".")[0] in ("keras", "tf_keras"):
                return None
            return f"{cls.__name__}.train_step"
    return None


class WeightsMismatch(ValueError):
    """The weights given to `replay` do not fit the model's variables."""


def replay(model, batch, weights=None, variables=None, names=None):
    """Replays one training step on `batch` to name what went non-finite first.

    The step runs eagerly (forward, the compiled losses with their compiled
    weights, gradients); per-op numeric checking is on only during the
    replay and restored after, even on error. The model's weights are put
    back as they were afterwards.

    Args:
        model: the compiled Keras model.
        batch: `(x, y, sample_weight)` (or `(x, y)`) as Keras fed `train_step`.
        weights: the weights to replay with (`[(name, array)]` or a list of
            arrays, see `assign_weights`); None keeps the model's.
        variables: `model_variables(model, log_scale)`, the variables
            `weights` names; found here if None.
        names: `same_variable_names` of the model the weights came from,
            when it is another copy (see `assign_weights`).

    Returns:
        A JSON-safe dict: `stage` ("forward", "loss", "gradients" or
        "none"), `layer` (the first non-finite layer, the output whose loss
        is non-finite, or the layer whose backward pass made the first
        non-finite gradient), `op` (as TensorFlow's numeric checking names
        it), `loss` (the loss function), `message`, `samples` (batch indices
        involved), `batch_size`, `inputs`/`targets` (per array, the samples
        non-finite or extreme), `nonfinite_weights`, `nonfinite_layers`,
        `loss_components`, `total_loss`, `gradient_norms` (per layer) and
        `check_numerics` (op, values, layer, function, phase).

    Example:

    ```python
    result = replay(model, (x_batch, y_batch), weights=weights_before)
    print(result["stage"], result["layer"], result["op"])   # loss pred_intensity Log
    ```
    """
    x, y, sample_weight = capture.split_batch(batch)
    if variables is None:
        variables = model_variables(model, find_log_scale(model).variable)
    saved = current_weights(variables)
    try:
        if weights is not None:
            try:
                assign_weights(variables, weights, names)
            except ValueError as error:
                raise WeightsMismatch(str(error)) from None
        result = _Replay(model, x, y, sample_weight).run()
        own_step = _own_train_step(model)
        if own_step is not None:
            result["caveat"] = (f"the model's train_step is its own ({own_step}): the replay ran Keras's step (the "
                                "compiled losses on the model's outputs), not that one")
        return result
    finally:
        assign_weights(variables, saved)


# -------------------------------------------------------------- from a folder
def _import_custom_objects(recorded, modules):
    """Imports the modules that register the saved model's custom objects.

    Of the modules the manifest names (`recorded`), only this package's own
    are imported without being asked: a folder from someone else chooses no
    code to run. The others are named in the error when the load fails.
    """
    own = [name for name in recorded if name.split(".")[0] == "ptycho_callbacks"]
    for module in own + list(modules or ()):
        importlib.import_module(module)


def _original_indices(result, kept):
    """Maps the sample indices of a replay on kept samples back to the failing batch's."""
    def mapped(indices):
        return [kept[i] for i in indices]

    result["samples"] = mapped(result["samples"])
    for key in ("inputs", "targets"):
        for entry in result[key].values():
            entry["nonfinite"], entry["extreme"] = mapped(entry["nonfinite"]), mapped(entry["extreme"])
    for entry in result["loss_components"].values():
        entry["samples"] = mapped(entry["samples"])


def load_saved_model(path, unsafe=False, compile=True):
    """The model saved in a forensics folder, loaded without running code from the file unless `unsafe`.

    Safe, the file must be a Keras zip archive (the `.keras` format), loaded
    with Keras's safe mode on: a `Lambda` layer's code is refused, not run.
    A file named `model.keras` that is really HDF5 (or anything else) is
    refused, since Keras would load HDF5 without safe mode.

    Raises:
        capture.ForensicsError: the file is not a Keras zip archive (and not `unsafe`).
    """
    if not unsafe and not zipfile.is_zipfile(path):
        raise capture.ForensicsError(
            f"{path}: not a Keras zip archive (.keras format); refused, because loading another format could "
            "run code from the file. Replay with --unsafe only for a folder you trust")
    return keras.models.load_model(path, safe_mode=not unsafe, compile=compile)


def _resolve_loss(output, origin, folder, trusted):
    """The loss function or `Loss` of one output as the manifest records it (`loss_origins`).

    A module is only looked up, never imported here, and only in a package
    the user named (`trusted`: the top-level packages of `--import` and
    `--setup`) or this one; what is found must be a Python function or a
    Keras `Loss` class. A manifest from someone else thus cannot make the
    replay call anything else that happens to be loaded (say `os.system`).
    """
    if not isinstance(origin, dict):
        raise capture.ForensicsError(f"{folder}: the manifest's loss of output {output!r} is malformed")
    if isinstance(origin.get("keras"), str):
        return origin["keras"]
    if isinstance(origin.get("keras"), dict):  # one of Keras's Loss classes, by its serialization
        class_name = origin["keras"].get("class_name")
        if not isinstance(class_name, str) or not isinstance(getattr(keras.losses, class_name, None), type):
            raise capture.ForensicsError(f"{folder}: the loss of output {output!r} names {class_name!r}, "
                                         "which is not one of Keras's losses")
        return keras.losses.deserialize(origin["keras"])
    module_name, qualname = origin.get("module"), origin.get("qualname")
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        raise capture.ForensicsError(f"{folder}: the manifest's loss of output {output!r} is malformed")
    if not any(module_name == package or module_name.startswith(package + ".") for package in trusted):
        raise capture.ForensicsError(
            f"{folder}: the loss of output {output!r} is {module_name}.{qualname}: pass --import {module_name} "
            "(or --setup with a function of its package) to use it, or pass the compiled model")
    found = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is None or "<locals>" in qualname:
        raise capture.ForensicsError(
            f"{folder}: the loss of output {output!r} is {module_name}.{qualname}, which is not loaded: "
            f"pass --import {module_name} (or --setup with a function of a module that imports it), or pass "
            "the compiled model")
    is_loss_class = isinstance(found, type) and issubclass(found, keras.losses.Loss)
    if is_loss_class != bool(origin.get("instance")) or not (is_loss_class or isinstance(found, types.FunctionType)):
        raise capture.ForensicsError(f"{folder}: the loss of output {output!r}, {module_name}.{qualname}, is "
                                     "neither a Python function nor a Keras Loss class")
    if origin.get("instance"):
        config = origin.get("config")
        try:
            return found(**config) if isinstance(config, dict) else found()
        except TypeError:  # a config its own constructor does not take
            return found()
    return found


def _compile_from_manifest(model, manifest, folder, trusted):
    """Compiles a model loaded without its compile config with the losses and weights the manifest records."""
    losses = manifest.get("losses") or {}
    origins, weights = losses.get("origins") or {}, losses.get("weights") or {}
    names = output_names(model)
    if not origins:
        raise capture.ForensicsError(f"{folder}: the manifest records no loss: pass the compiled model")
    if not set(origins) & set(names) and len(origins) == len(names):
        # A revived subclassed model names its outputs anew: the outputs are matched by position.
        origins = dict(zip(names, origins.values()))
        weights = {f"{name}_loss": weight for name, weight in zip(names, weights.values())}
    loss = {name: _resolve_loss(name, origins[name], folder, trusted) for name in names if name in origins}
    if not loss:
        raise capture.ForensicsError(f"{folder}: the manifest's losses are for outputs {sorted(origins)}, the "
                                     f"model's outputs are {names}: pass the compiled model")
    loss_weights = {name: float(weights.get(f"{name}_loss", 1.0)) for name in loss}
    if len(names) == 1:
        model.compile(loss=next(iter(loss.values())))
    else:
        model.compile(loss=[loss.get(name) for name in names],
                      loss_weights=[loss_weights.get(name, 0.0) for name in names])
    return model


def _names_of_both(recorded, model, variables):
    """The names of each variable in the run's model and in this one, joined by path."""
    names = {path: list(aliases) for path, aliases in same_variable_names(model, variables).items()}
    for path, aliases in recorded.items():
        names[path] = list(dict.fromkeys(names.get(path, []) + aliases))
    return names


def replay_folder(folder, model=None, modules=None, unsafe=False, setup=None):
    """Loads a `nan_forensics/` folder (or the run directory holding it) and replays its step.

    The replay runs with the weights saved before the failing step, every
    variable included (also those Keras does not save with the model, such
    as PtychoPINN's `log_scale` under Keras 3), matched by their paths and,
    where a loaded model holds two copies of a variable the run shared, put
    into both.

    Args:
        folder: the folder, or the run directory holding it.
        model: the compiled model to replay with; None loads the folder's
            `model.keras` (without its compile config: it is compiled with
            the losses and weights the manifest records, from modules
            already imported).
        modules: modules to import first, so that the saved model's custom
            layers and losses are registered and found.
        unsafe: load the saved model even when that can run code from the
            file (`load_saved_model`); only for a folder you trust.
        setup: called with the run's recorded config (a dict) before the
            model is loaded, to set up what its layers read when constructed
            (e.g. PtychoPINN's `params.cfg`).

    Returns:
        `replay`'s dict with sample indices of the failing batch, plus
        `folder`, `event` (the guard's) and `dropped` (from the manifest).

    Raises:
        capture.ForensicsError: no folder, no batch, or no model to replay.
    """
    folder = capture.find_folder(folder)
    manifest = capture.read_manifest(folder)
    batch = capture.read_batch(folder, manifest)
    weights = capture.read_weights(folder, manifest)
    info = manifest.get("model") or {}
    recorded = [name for name in info.get("modules") or [] if isinstance(name, str)]
    _import_custom_objects(recorded, modules)
    if setup is not None:
        config = manifest.get("config")
        setup(dict(config) if isinstance(config, dict) else {})
    if model is None:
        if not info.get("file"):
            raise capture.ForensicsError(
                f"{folder}: no saved model ({info.get('reason') or 'no reason recorded'}); "
                "pass the compiled model to replay_folder(folder, model=...)")
        path = capture.file_in_folder(folder, info["file"])
        if os.path.basename(path) != FORENSICS_MODEL:
            raise capture.ForensicsError(f"{folder}: the manifest names the model {info['file']!r}; only "
                                         f"{FORENSICS_MODEL} in the folder is loaded")
        compile_here = bool((manifest.get("losses") or {}).get("origins"))
        try:
            model = load_saved_model(path, unsafe, compile=not compile_here)
        except capture.ForensicsError:
            raise
        except Exception as error:  # noqa: BLE001 - loading user models fails in many ways
            named = f" (the run's model came from: {', '.join(recorded)})" if recorded else ""
            reason = " ".join(str(error).split())
            reason = reason[:reason.index("Full object config")].rstrip() if "Full object config" in reason else reason
            raise capture.ForensicsError(
                f"{folder}: the saved model cannot be loaded ({type(error).__name__}: {reason[:400]}); import the "
                f"module defining its custom layers (--import MODULE){named}, set up what its layers read when "
                "constructed (--setup MODULE:FUNCTION), or pass the model") from None
        if compile_here:
            named = list(modules or ()) + [getattr(setup, "__module__", None) or ""]
            trusted = {"ptycho_callbacks.sim"} | {name.rpartition(".")[0] or name for name in named if name}
            _compile_from_manifest(model, manifest, folder, trusted)
    elif weights is None:
        raise capture.ForensicsError(f"{folder}: the weights before the failing step were not saved")
    variables = model_variables(model, find_log_scale(model).variable)
    names = _names_of_both(capture.read_weight_names(manifest), model, variables)
    try:
        result = replay(model, batch, weights, variables, names)
    except WeightsMismatch as error:
        raise capture.ForensicsError(f"{folder}: the saved weights do not fit the model: {error}") from None
    _original_indices(result, manifest["batch"]["samples"])
    result.update(folder=os.path.abspath(folder), event=manifest.get("event"), dropped=manifest.get("dropped"))
    return result
