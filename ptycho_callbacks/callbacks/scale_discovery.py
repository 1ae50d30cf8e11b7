"""Finding a PtychoPINN model's `log_scale` variable without being told."""

from typing import NamedTuple

SCALER_NAMES = ("IntensityScaler", "IntensityScaler_inv", "intensity_scaler", "intensity_scaler_inv")


def _is_variable(value):
    import tensorflow as tf

    if isinstance(value, tf.Variable):
        return True
    return hasattr(value, "assign") and hasattr(value, "trainable") and hasattr(value, "numpy")


def _variable_name(variable):
    return getattr(variable, "path", None) or getattr(variable, "name", "")


def _layer_scale_variables(layer):
    """Variables a scaler layer holds: its weights and any variable attribute (e.g. `w`)."""
    found = []
    for value in list(getattr(layer, "weights", [])) + list(vars(layer).values()):
        if _is_variable(value) and not any(value is known for known in found):
            found.append(value)
    return found


def _is_scaler(layer):
    return type(layer).__name__ in SCALER_NAMES or layer.name in SCALER_NAMES


def _all_layers(model):
    layers = getattr(model, "_flatten_layers", None)
    if layers is not None:
        return list(layers(include_self=False))
    return list(model.layers)


class ScaleVariable(NamedTuple):
    """What `find_log_scale` found: the variable (None if none), how (or why not), the scaler layers."""

    variable: object
    how_found: str
    scalers: list


def find_log_scale(model):
    """Returns the `ScaleVariable` of `model`: (variable, how_found, scaler_layers), or (None, reason, ...).

    Looks, in order, at layers whose class or name is IntensityScaler /
    IntensityScaler_inv (their weights and variable attributes), then at any
    model variable whose name contains `log_scale`.
    """
    scalers = [layer for layer in _all_layers(model) if _is_scaler(layer)]
    for layer in scalers:
        variables = _layer_scale_variables(layer)
        if len(variables) == 1:
            return ScaleVariable(variables[0], f"attribute of layer {layer.name!r} ({type(layer).__name__})",
                                 scalers)
    for variable in model.variables:
        if "log_scale" in _variable_name(variable):
            return ScaleVariable(variable, f"model variable named {_variable_name(variable)!r}", scalers)
    return ScaleVariable(None, "no layer named or of class IntensityScaler/IntensityScaler_inv holds a variable, "
                               "and no model variable is named like 'log_scale'", scalers)


def shares_one_variable(scalers, variable):
    """True when every scaler layer holds `variable` itself, None with fewer than two layers."""
    if len(scalers) < 2:
        return None
    return all(any(v is variable for v in _layer_scale_variables(layer)) for layer in scalers)


def is_trained_by_optimizer(model, variable):
    """True when `variable` is among the model's trainable variables (so fit updates it)."""
    return any(_same_variable(v, variable) for v in model.trainable_variables)


def _same_variable(a, b):
    if a is b:
        return True
    # Keras 3 wraps backend variables; compare the underlying tf.Variable.
    return getattr(a, "value", None) is b or getattr(b, "value", None) is a
