"""default_callbacks: the whole suite for a PtychoPINN-style model in one call."""

import dataclasses
import inspect
import os
from typing import Any

from .run_dir import claim_run_dir, resolve_run_dir

SET_BY_THE_SUITE = {"run": "the suite's run", "log_dir": "log_dir", "stages": "stages",
                    "probe_inputs": "probe", "truth": "probe", "probe_counts": "probe"}
"""Callback arguments `default_callbacks` sets itself, and the parameter of its own that sets each."""


@dataclasses.dataclass
class Probe:
    """A small fixed batch of model inputs the callbacks evaluate the model on, with what is known of it.

    Args:
        inputs: the model inputs (dict by input name, list, or one array);
            layer stages are evaluated on it, and the scale monitor checks
            that the scale is applied once. Keep it small (a few samples).
        truth: the ground-truth object of these samples (complex), for the
            prediction-vs-truth sections (`StageStatistics`).
        counts: the measured intensities of these samples in the units of
            the model's `pred_intensity` (its training target), for the
            photon budget and the Poisson NLL's early warnings (`PhysicsHealth`).
    """

    inputs: Any
    truth: Any = None
    counts: Any = None


def _callback_classes():
    from .callbacks.intensity_scale_monitor import IntensityScaleMonitor
    from .callbacks.loss_components import LossComponents
    from .callbacks.physics_health import PhysicsHealth
    from .callbacks.stage_statistics import StageStatistics
    from .callbacks.summary_report import SummaryReport
    from .nan.guard import NaNGuard

    return {cls.__name__: cls for cls in (NaNGuard, IntensityScaleMonitor, LossComponents, StageStatistics,
                                          PhysicsHealth, SummaryReport)}


def _checked_options(options, classes):
    """{class name: kwargs}; ValueError naming what is unknown or set by the suite itself."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(classes))
    if unknown:
        raise ValueError(f"options: no callback named {unknown}; the suite's callbacks are {sorted(classes)}")
    for name, kwargs in options.items():
        if not isinstance(kwargs, dict):
            raise ValueError(f"options[{name!r}] must be a dict of {name} arguments, got {type(kwargs).__name__}")
        accepted = set(inspect.signature(classes[name]).parameters)
        for key in kwargs:
            if key in SET_BY_THE_SUITE:
                raise ValueError(f"options[{name!r}][{key!r}]: the suite sets {key!r} from its "
                                 f"{SET_BY_THE_SUITE[key]!r} parameter; give it there")
            if key not in accepted:
                raise ValueError(f"options[{name!r}]: {name} takes no argument {key!r}; it takes "
                                 f"{sorted(accepted - set(SET_BY_THE_SUITE))}")
    return options


def default_callbacks(model, log_dir, *, config=None, scenario=None, stages=None, probe=None, options=None,
                      overwrite=False, verbose=1):
    """Builds the suite: NaN guard, scale monitor, loss components, stage statistics, physics health, report.

    With nothing but the model and a directory it still watches the scale,
    splits the loss, guards against NaN (restoring the last finite weights
    and saving the failing step to `nan_forensics/`) and writes the report;
    `stages` and `probe` add the data-path statistics, the
    prediction-vs-truth sections and the physics health. All callbacks feed
    one `Run` (one record, one TensorBoard run under `log_dir/ptycho`), so
    their order in the list does not matter. `model.fit` is wrapped
    (`finish_on_exception`) so that a fit left by an exception or Ctrl-C
    still writes the record and the report.

    Args:
        model: the compiled model the suite watches.
        log_dir: the run directory: TensorBoard logs, `record.json`, `report.md`.
        config: the run's configuration for the report: `nphotons`, `N`,
            `gridsize`, `intensity_scale`, `intensity_scale_trainable`,
            `normalize_gain`, `e_batch_intensity`, `loss_weights`, ...
        scenario: the run's name in the report (default: the directory's name).
        stages: data-path stages for `StageStatistics` (see there).
        probe: a `Probe` (inputs, and optionally truth and counts).
        options: {callback class name: {argument: value}}, to set any
            argument of any callback of the suite, e.g.
            `{"NaNGuard": {"on_nan": "raise"}, "StageStatistics": {"every_n_epochs": 5},
            "IntensityScaleMonitor": {"log_scale_variable": v}}`.
        overwrite: write into `log_dir` even when it holds a run; by default
            a new run goes alongside, into `log_dir-2`, `log_dir-3`, ...
            (`claim_run_dir`: the directory is claimed at once, so that two
            processes started together get two; the callbacks' `log_dir`
            says where).
        verbose: 1 prints one line per finding or event; given to every
            callback that takes it unless `options` says otherwise.

    Returns:
        A list of callbacks for `model.fit(..., callbacks=...)`:
        `NaNGuard`, `IntensityScaleMonitor`, `LossComponents`,
        `StageStatistics` (with `stages`, or a probe with truth),
        `PhysicsHealth` (with a probe with counts) and `SummaryReport`.

    Raises:
        ValueError: no model, a probe that is not a `Probe`, or `options`
            naming an unknown callback or argument.

    Example:
    >>> callbacks = default_callbacks(model, "runs/gs2", config={"nphotons": 1e9, "N": 64},
    ...                               options={"StageStatistics": {"every_n_epochs": 5}})
    >>> model.fit(x, y, epochs=50, callbacks=callbacks)
    """
    from .callbacks.fit_exceptions import finish_on_exception
    from .run import Run, is_chief

    if model is None:
        raise ValueError("default_callbacks needs the model it will watch")
    if probe is not None and not isinstance(probe, Probe):
        raise ValueError(f"probe must be a ptycho_callbacks.Probe(inputs, truth=..., counts=...), "
                         f"got {type(probe).__name__}")
    classes = _callback_classes()
    options = _checked_options(options, classes)
    name = scenario or os.path.basename(os.path.normpath(os.fspath(log_dir)))
    # The chief claims the directory at once, so that two trainings started together never share one;
    # the other workers of a multi-worker training write nothing.
    log_dir, note = (claim_run_dir if is_chief() else resolve_run_dir)(log_dir, overwrite=overwrite)
    if note and verbose:
        print(f"ptycho_callbacks: {note}", flush=True)
    run = Run(log_dir, scenario=name, config=config)

    def build(class_name, **kwargs):
        cls = classes[class_name]
        if "verbose" in inspect.signature(cls).parameters:
            kwargs["verbose"] = verbose
        kwargs.update(options.get(class_name, {}))
        return cls(run=run, **kwargs)

    probe = probe or Probe(inputs=None)
    suite = [build("NaNGuard"), build("IntensityScaleMonitor", probe_inputs=probe.inputs), build("LossComponents")]
    if stages or probe.truth is not None:
        suite.append(build("StageStatistics", stages=stages or [], probe_inputs=probe.inputs, truth=probe.truth))
    if probe.inputs is not None and probe.counts is not None:
        suite.append(build("PhysicsHealth", probe_inputs=probe.inputs, probe_counts=probe.counts))
    suite.append(build("SummaryReport"))
    finish_on_exception(model)
    return suite
