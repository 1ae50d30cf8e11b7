"""finish_on_exception: a `fit` left by an exception or Ctrl-C still leaves its record and report.

Keras calls no `on_train_end` when `fit` is left by an exception (a user's
callback that raises, a broken input pipeline, `NonFiniteTrainingError`,
KeyboardInterrupt). Without it the record would stay "running", the report
would be missing and the summary writers would stay open.
"""

import functools
import warnings

_MARK = "_ptycho_finishes_on_exception"
_CALLBACKS_POSITION = 5  # fit(x, y, batch_size, epochs, verbose, callbacks, ...) in both Keras versions


def _callbacks_of(args, kwargs):
    if "callbacks" in kwargs:
        return kwargs["callbacks"] or []
    return (args[_CALLBACKS_POSITION] or []) if len(args) > _CALLBACKS_POSITION else []


def tell_fit_exception(callbacks, error):
    """Calls `on_fit_exception(error)` of each of `callbacks` that has one; a failure there is a warning."""
    for callback in callbacks:
        handler = getattr(callback, "on_fit_exception", None)
        if handler is None:
            continue
        try:
            handler(error)
        except Exception as failure:  # noqa: BLE001 - the user's exception matters more
            warnings.warn(f"{type(callback).__name__} could not close its run after "
                          f"{type(error).__name__}: {failure}", RuntimeWarning, stacklevel=3)


def finish_on_exception(model):
    """Wraps `model.fit` so that our callbacks close their run when `fit` raises.

    When `fit` is left by any exception, including KeyboardInterrupt, every
    callback of ours in that call's `callbacks` gets `on_fit_exception(error)`
    (`SummaryReport` then writes `record.json` and `report.md` with the status
    "interrupted", "failed" or "stopped_nan"; all release their TensorBoard
    writers) and the exception goes on as it was. `default_callbacks` does
    this for you; wrapping twice is harmless.

    Args:
        model: the Keras model whose `fit` to wrap.

    Returns:
        The model.

    Example:
    >>> finish_on_exception(model)
    >>> model.fit(x, y, callbacks=[SummaryReport("runs/a")])   # Ctrl-C still leaves report.md
    """
    fit = model.fit
    if getattr(fit, _MARK, False):
        return model

    @functools.wraps(fit)
    def fit_finishing_on_exception(*args, **kwargs):
        try:
            return fit(*args, **kwargs)
        except BaseException as error:
            # A run the guard already closed from inside the failing step (`Run.abort`) is not told twice.
            tell_fit_exception([callback for callback in _callbacks_of(args, kwargs)
                                if getattr(getattr(callback, "run", None), "aborted_by", None) is not error], error)
            raise

    setattr(fit_finishing_on_exception, _MARK, True)
    model.fit = fit_finishing_on_exception
    return model
