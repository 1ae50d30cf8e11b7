"""The loss components Keras logs for a compiled model, and their weights."""

TOTAL = "loss"


def is_loss_name(name):
    """True for Keras's log names of the total loss and of loss components."""
    return name == TOTAL or name.endswith("_loss")


def _compiled_loss_container(model):
    # Keras 3 keeps the compiled losses in `_compile_loss`; tf_keras in `compiled_loss`.
    for attribute in ("_compile_loss", "compiled_loss"):
        container = getattr(model, attribute, None)
        if hasattr(container, "_user_loss_weights"):
            return container
    return None


def output_names(model):
    """The names Keras gives the model's outputs, in order.

    Keras 3's `Sequential` has no `output_names`: its outputs are named after
    the layers that make them (for a `Sequential`, its last layer).
    """
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    found = []
    for tensor in getattr(model, "outputs", None) or []:
        history = getattr(tensor, "_keras_history", None)
        found.append(getattr(history[0], "name", None) if history else None)
    if found and all(found):
        return found
    layers = getattr(model, "layers", None) or []
    return [layers[-1].name] if layers else []


def compiled_loss_weights(model):
    """Returns {logged component name: weight}, e.g. {"pred_intensity_loss": 1.0}.

    Names are the ones Keras logs for a multi-output model (`<output>_loss`);
    a single-output model logs only the total and has no components here.
    Outputs compiled without a loss are left out; a missing weight is 1.0.
    """
    names = output_names(model)
    if len(names) < 2:
        return {}
    container = _compiled_loss_container(model)
    losses = getattr(container, "_user_losses", None)
    if losses is None:
        losses = getattr(model, "loss", None)
    weights = getattr(container, "_user_loss_weights", None)
    has_loss = per_output(losses, names, default=True, present=lambda v: v is not None)
    weight_of = per_output(weights, names, default=1.0)
    return {f"{name}_loss": float(weight_of[name]) for name in names if has_loss[name]}


def per_output(spec, output_names, default, present=None):
    """Spreads a compile argument (None, scalar, list or dict) over the outputs."""
    if spec is None:
        return {name: default for name in output_names}
    if isinstance(spec, dict):
        values = {name: spec.get(name) for name in output_names}
    elif isinstance(spec, (list, tuple)) or hasattr(spec, "__len__") and not isinstance(spec, str):
        values = dict(zip(output_names, list(spec)))
    else:
        values = {name: spec for name in output_names}
    if present is not None:
        return {name: present(values.get(name)) for name in output_names}
    return {name: default if values.get(name) is None else values[name] for name in output_names}


def loss_origins(model):
    """{output name: where its compiled loss comes from}, as JSON, for rebuilding the compile elsewhere.

    A loss Keras knows by a string is `{"keras": "mean_absolute_error"}`, one
    of Keras's `Loss` classes `{"keras": <its Keras serialization>}`; a
    function is `{"module": ..., "qualname": ...}`; another `Loss` instance
    is its class's module and qualname with `"instance": true` and its config.
    Outputs without a loss are left out. A loss function need not be
    registered with Keras (PtychoPINN's are not): the module that defines it
    is imported by whoever rebuilds the compile, never by this record.
    """
    names = output_names(model)
    container = _compiled_loss_container(model)
    losses = getattr(container, "_user_losses", None)
    if losses is None:
        losses = getattr(model, "loss", None)
    origins = {}
    for name, loss in per_output(losses, names, default=None).items():
        if loss is None:
            continue
        if isinstance(loss, str):
            origins[name] = {"keras": loss}
            continue
        is_function = callable(loss) and hasattr(loss, "__qualname__")
        owner = loss if is_function else type(loss)
        if not is_function and owner.__module__.split(".")[0] in ("keras", "tf_keras"):
            from .._keras import keras

            origins[name] = {"keras": keras.losses.serialize(loss)}
            continue
        origin = {"module": owner.__module__, "qualname": owner.__qualname__, "instance": not is_function}
        if not is_function and hasattr(loss, "get_config"):
            try:
                origin["config"] = loss.get_config()
            except (NotImplementedError, TypeError):
                origin["config"] = None
        origins[name] = origin
    return origins
