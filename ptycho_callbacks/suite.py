"""default_callbacks: the whole suite for a PtychoPINN-style model in one call."""

import os

from .record import RunRecord
from .run_dir import resolve_run_dir


def default_callbacks(model, log_dir, scenario=None, config=None, stages=None, probe_inputs=None,
                      truth=None, log_scale_variable=None, update_freq=1, stage_every_n_epochs=1,
                      restore_weights=True, on_nan="stop", verbose=1, probe_counts=None,
                      physics_every_n_epochs=1, forensics=True, forensics_max_bytes=None, overwrite=False):
    """Builds the suite: scale monitor, loss components, stage statistics, physics health, NaN guard, report.

    With nothing but the model and a directory it still watches the scale,
    splits the loss, guards against NaN and writes the report; stages,
    probe inputs and truth add the data-path statistics and the
    prediction-vs-truth sections. All callbacks feed one `RunRecord` and one
    TensorBoard run under `log_dir/ptycho`. `model.fit` is wrapped
    (`finish_on_exception`) so that a fit left by an exception or Ctrl-C
    still writes the record and the report.

    Args:
        model: the compiled model (used to discover the scale variable and
            loss weights at train begin; passed here so the suite is built
            for it).
        log_dir: the run directory: TensorBoard logs, `record.json`, `report.md`.
        scenario: the run's name in the report (default: the directory's name).
        config: run configuration for the report: `nphotons`, `N`,
            `gridsize`, `intensity_scale`, `intensity_scale_trainable`,
            `normalize_gain`, `e_batch_intensity`.
        stages: data-path stages for `StageStatistics` (see there); none
            means no stage statistics.
        probe_inputs: a small fixed batch of model inputs: stages given as
            layer names are evaluated on it, and the scale monitor checks
            that the scale is applied once.
        truth: ground-truth object for `probe_inputs` (complex), for the
            amplitude and phase bias sections.
        log_scale_variable: the scale variable, if it cannot be found.
        update_freq: batches between per-batch TensorBoard points.
        stage_every_n_epochs: epochs between stage statistics.
        restore_weights: put back the last finite weights on NaN (before any
            other callback, e.g. a checkpoint, can see the non-finite ones).
        on_nan: "stop" (graceful) or "raise".
        verbose: 1 prints one line per finding or event.
        probe_counts: measured intensities of `probe_inputs` in the units of
            the model's `pred_intensity` (its training target); with
            `probe_inputs` it adds `PhysicsHealth`.
        physics_every_n_epochs: epochs between physics-health evaluations.
        forensics: on NaN, save the failing step to `log_dir/nan_forensics`
            and replay it to name the layer and op (see `NaNGuard`).
        forensics_max_bytes: size limit of that folder (NaNGuard's default if None).
        overwrite: write into `log_dir` even when it holds a run; by default
            a new run goes alongside, into `log_dir-2`, `log_dir-3`, ...
            (`resolve_run_dir`; the callbacks' `log_dir` says where).

    Returns:
        A list of callbacks for `model.fit(..., callbacks=...)`.

    Example:
    >>> callbacks = default_callbacks(model, "runs/gs2", config={"nphotons": 1e9, "N": 64})
    >>> model.fit(x, y, epochs=50, callbacks=callbacks)
    """
    from .callbacks.fit_exceptions import finish_on_exception
    from .callbacks.intensity_scale_monitor import IntensityScaleMonitor
    from .callbacks.loss_components import LossComponents
    from .callbacks.nan_guard import DEFAULT_FORENSICS_BYTES, NaNGuard
    from .callbacks.physics_health import PhysicsHealth
    from .callbacks.stage_statistics import StageStatistics
    from .callbacks.summary_report import SummaryReport

    if model is None:
        raise ValueError("default_callbacks needs the model it will watch")
    name = scenario or os.path.basename(os.path.normpath(os.fspath(log_dir)))
    log_dir, note = resolve_run_dir(log_dir, overwrite=overwrite)
    if note and verbose:
        print(f"ptycho_callbacks: {note}", flush=True)
    record = RunRecord(scenario=name, base_dir=os.path.abspath(log_dir), config=dict(config or {}))
    shared = dict(log_dir=log_dir, record=record)
    max_bytes = DEFAULT_FORENSICS_BYTES if forensics_max_bytes is None else forensics_max_bytes
    suite = [
        NaNGuard(on_nan=on_nan, restore_weights=restore_weights, verbose=verbose, forensics=forensics,
                 forensics_max_bytes=max_bytes, **shared),
        IntensityScaleMonitor(log_scale_variable=log_scale_variable, update_freq=update_freq,
                              probe_inputs=probe_inputs, verbose=verbose, **shared),
        LossComponents(update_freq=update_freq, **shared),
    ]
    if stages or truth is not None:
        suite.append(StageStatistics(stages or [], probe_inputs=probe_inputs, truth=truth,
                                     every_n_epochs=stage_every_n_epochs, verbose=verbose, **shared))
    if probe_inputs is not None and probe_counts is not None:
        suite.append(PhysicsHealth(probe_inputs, probe_counts, every_n_epochs=physics_every_n_epochs, **shared))
    suite.append(SummaryReport(**shared))
    finish_on_exception(model)
    return suite
