"""Keras callbacks that show what happens inside PtychoPINN trainings.

The pure parts (`record`, `stats`, `physics`, `stages`, `render`, `run_dir`,
`nan.events`) import numpy only; the callbacks import TensorFlow when first
used. `docs/architecture.md` says which module owns what.

Example:
>>> from ptycho_callbacks import default_callbacks
>>> model.fit(x, y, epochs=50, callbacks=default_callbacks(model, "runs/gs2"))
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "default_callbacks": "suite",
    "from_ptychopinn": "ptychopinn",
    "IntensityScaleMonitor": "callbacks.intensity_scale_monitor",
    "LossComponents": "callbacks.loss_components",
    "NaNGuard": "nan.guard",
    "NonFiniteTrainingError": "nan.events",
    "Probe": "suite",
    "Run": "run",
    "PhysicsHealth": "callbacks.physics_health",
    "finish_on_exception": "callbacks.fit_exceptions",
    "StageStatistics": "callbacks.stage_statistics",
    "SummaryReport": "callbacks.summary_report",
    "RunRecord": "record",
    "render_report": "render",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'ptycho_callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
