"""The model's variables as our callbacks see them: the `tf.Variable` behind each, its name, its value.

Keras 3 wraps every `tf.Variable` in a backend variable, tf_keras does not;
PtychoPINN's `log_scale` is a plain `tf.Variable` held as a layer attribute,
which Keras 3 does not track. These helpers hide the difference.
"""

import numpy as np
import tensorflow as tf



def tf_variable(variable):
    """The `tf.Variable` behind a Keras 3 variable (or the variable itself)."""
    if isinstance(variable, tf.Variable):
        return variable
    value = getattr(variable, "value", None)
    return value if isinstance(value, tf.Variable) else variable


def variable_value(variable):
    """A variable's value as numpy; also for distributed variables, whose `__array__` fails under tf_keras."""
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def variable_name(variable):
    """A variable's own name: its Keras 3 `path`, or its name without `:0` ("Variable" when made without one)."""
    name = getattr(variable, "path", None) or getattr(variable, "name", "") or "?"
    return name[:-2] if name.endswith(":0") else name


def _is_unnamed(name):
    """TensorFlow's names of a variable made without one: `Variable`, `Variable_1`, ... (also under a scope)."""
    base = name.rsplit("/", 1)[-1]
    return base == "Variable" or (base.startswith("Variable_") and base[len("Variable_"):].isdigit())


def _layers(model):
    """Every layer of `model`, nested ones included, each once, in Keras's order."""
    found, seen, pending = [], set(), list(getattr(model, "layers", []))
    while pending:
        layer = pending.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        pending[:0] = list(getattr(layer, "layers", None) or [])
    return found


def _is_variable(value):
    return isinstance(value, tf.Variable) or isinstance(tf_variable(value), tf.Variable)


def attribute_paths(model):
    """{id of a tf.Variable: ["layer.attribute", ...]}: where the model's layers hold each variable.

    This names the variables Keras does not name usefully: a plain
    `tf.Variable` made without a name (PtychoPINN's `log_scale` and probe are
    both "Variable") is `intensity_scaler.w`, `probe_illumination.w`. A
    variable two layers hold has both paths.
    """
    paths = {}
    for layer in _layers(model):
        for attribute, value in vars(layer).items():
            if not attribute.startswith("_") and _is_variable(value):
                paths.setdefault(id(tf_variable(value)), []).append(f"{layer.name}.{attribute}")
    return paths


def model_variables(model, log_scale=None):
    """[(path, tf.Variable)]: every variable the model computes with, each once, by a path that is unique.

    The model's weights in Keras's order, then the plain variables its
    layers hold that Keras does not track (Keras 3 tracks no plain
    `tf.Variable` attribute), then `log_scale` when no layer holds it. A
    variable's path is its Keras name; a variable without a name of its own
    ("Variable") is named where a layer holds it (`intensity_scaler.w`); a
    path taken already gets `#2`, `#3`. Code that matches variables uses the
    variables themselves or their position, and the paths only to match
    those of another copy of the model (`same_variable_names`).

    Args:
        model: a built Keras model.
        log_scale: the intensity scaler's variable (`find_log_scale`), or None.
    """
    paths = attribute_paths(model)
    candidates = list(model.weights)
    for layer in _layers(model):
        candidates += [value for attribute, value in vars(layer).items()
                       if not attribute.startswith("_") and _is_variable(value)]
    if log_scale is not None:
        candidates.append(log_scale)
    found, seen, taken = [], set(), set()
    for variable in candidates:
        tf_var = tf_variable(variable)
        if id(tf_var) in seen:
            continue
        seen.add(id(tf_var))
        name = variable_name(variable)
        held = paths.get(id(tf_var))
        if held and (_is_unnamed(name) or name in taken):
            name = held[0]
        elif _is_unnamed(name) and variable is log_scale:
            name = "log_scale"
        unique, count = name, 1
        while unique in taken:
            count += 1
            unique = f"{name}#{count}"
        taken.add(unique)
        found.append((unique, tf_var))
    return found


def same_variable_names(model, variables):
    """{path: [every name of that variable]}: its path and the layer attributes holding it.

    Recorded beside saved weights, so that they can be put into another copy
    of the model (a saved and loaded one), where a variable two layers
    shared may have become two (one per layer), each named by one of these.
    """
    paths = attribute_paths(model)
    names = {}
    for path, variable in variables:
        names[path] = list(dict.fromkeys([path] + paths.get(id(variable), [])))
    return names


def assign_weights(variables, weights, names=None):
    """Sets `variables` (`model_variables`) from `[(path, array)]` (by name) or a list of arrays (in order).

    Args:
        variables: `[(path, tf.Variable)]` of the model to set.
        weights: `[(path, array)]`, matched by name, or arrays in the order
            of `variables`.
        names: `same_variable_names` of the model the weights came from
            (and of `variables`' model when that is another one): a weight
            goes into every variable sharing one of its names.

    Raises:
        ValueError: a weight no variable is named by, or a shape that differs.
    """
    if all(isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
           for entry in weights):
        pairs = _pairs_by_name(variables, weights, names or {})
    else:
        if len(weights) > len(variables):
            raise ValueError(f"{len(weights)} weight arrays for a model with {len(variables)} variables")
        pairs = [(name, variable, value) for (name, variable), value in zip(variables, weights)]
    for name, variable, value in pairs:
        value = np.asarray(value)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"variable {name!r} has shape {tuple(variable.shape)}, the value {value.shape}")
    for _, variable, value in pairs:
        variable.assign(value)


def _pairs_by_name(variables, weights, names):
    """[(path, variable, value)] matching weights to variables by their names, or by position when one
    weight has no name of the model but both lists are of one length and shape (Keras 3 prefixes a
    Sequential model's paths with its name, which a loaded copy does not share)."""
    known = {path: set(names.get(path, ())) | {path} for path, _ in variables}
    pairs = []
    for name, value in weights:
        wanted = set(names.get(name, ())) | {name}
        targets = [(path, variable) for path, variable in variables if known[path] & wanted]
        if not targets:
            if len(weights) == len(variables) and all(
                    tuple(np.shape(value)) == tuple(variable.shape)
                    for (_, value), (_, variable) in zip(weights, variables)):
                return [(path, variable, value) for (path, variable), (_, value) in zip(variables, weights)]
            raise ValueError(f"the model has no variable named {name!r}")
        pairs += [(path, variable, value) for path, variable in targets]
    return pairs


def current_weights(variables):
    """[(path, numpy value)] of `variables` (`model_variables`)."""
    return [(name, variable.numpy()) for name, variable in variables]
