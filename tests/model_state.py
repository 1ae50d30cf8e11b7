"""The variables the NaN guard watches and the optimizer's, as the guard tests read and reset them."""

from ptycho_callbacks.callbacks.scale_discovery import find_log_scale
from ptycho_callbacks.callbacks.variables import current_weights, model_variables


def watched_variables(model):
    """The weights, then log_scale when Keras does not track it (PtychoPINN style under Keras 3)."""
    return [variable for _, variable in model_variables(model, find_log_scale(model).variable)]


def model_weights(model):
    """[(name, numpy value)] of the watched variables."""
    return current_weights(model_variables(model, find_log_scale(model).variable))


def optimizer_variables(model):
    variables = model.optimizer.variables
    return variables() if callable(variables) else variables
