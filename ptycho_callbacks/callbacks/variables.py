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
    """A variable's name as events and forensics give it: its Keras 3 `path`, or its name without `:0`."""
    name = getattr(variable, "path", None) or getattr(variable, "name", "") or "?"
    return name[:-2] if name.endswith(":0") else name


def model_variables(model, log_scale):
    """[(name, tf.Variable)]: the model's weights, then `log_scale` when the model does not track it.

    Args:
        model: a built Keras model.
        log_scale: the intensity scaler's variable (`find_log_scale`), or None.
    """
    found, seen = [], set()
    for variable in list(model.weights) + ([log_scale] if log_scale is not None else []):
        tf_var = tf_variable(variable)
        if id(tf_var) not in seen:
            seen.add(id(tf_var))
            found.append((variable_name(variable), tf_var))
    return found


def assign_weights(variables, weights):
    """Sets `variables` (`model_variables`) from `[(name, array)]` (by name) or a list of arrays (in order).

    Raises:
        ValueError: a name `variables` do not have, or a shape that differs.
    """
    if all(isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
           for entry in weights):
        by_name = dict(variables)
        pairs = []
        for name, value in weights:
            if name not in by_name:
                raise ValueError(f"the model has no variable named {name!r}")
            pairs.append((name, by_name[name], value))
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


def current_weights(variables):
    """[(name, numpy value)] of `variables` (`model_variables`)."""
    return [(name, variable.numpy()) for name, variable in variables]
