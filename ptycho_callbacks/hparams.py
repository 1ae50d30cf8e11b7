"""A run's configuration and outcomes as columns: TensorBoard's HParams dashboard and `report --columns`.

One row per `RunRecord`: its configuration (the *hyperparameters*: photon
count, patch size, scale, loss weights, learning rate, ...) and its outcomes
(the *metrics*: final and best loss per component, trained scale, bias
against truth, where it went NaN). `SummaryReport` writes the row to the
run's TensorBoard run at close (`callbacks/hparams_summary.py`); the
`report` command prints the rows of many runs as one table (`compare.py`).
It imports numpy only.

A value that is not known is `None` (no ground truth: no bias; no
`log_scale` found: no trained scale): it is left out of TensorBoard, never
written as 0. A loss that ended non-finite keeps its NaN here (the table
shows it) and is left out of TensorBoard, whose HParams table cannot hold
NaN; the NaN columns say what happened.

Example:

```python
from ptycho_callbacks.hparams import row
row(RunRecord.load("runs/gs2_base/record.json"))["final_loss"]
```
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .record import RunRecord

HPARAM, METRIC, INFO = "hparam", "metric", "info"
"""Kinds of column: configuration (an HParams hyperparameter), outcome (an HParams metric), or the table only."""

METRIC_TAG_PREFIX = "outcome/"
"""The TensorBoard scalar tag of metric column `c` is `outcome/c`, in the run's `ptycho/train` event files."""

NO_NAN_STEP = -1
"""`nan_step` of a run that never went NaN (a step is never negative)."""

SESSION_STATUS = {
    "completed": "STATUS_SUCCESS",
    "stopped_nan": "STATUS_FAILURE",
    "failed": "STATUS_FAILURE",
    "interrupted": "STATUS_UNKNOWN",
    "running": "STATUS_RUNNING",
}
"""The HParams session status (a `tensorboard.hparams.Status` name) of each `RunRecord.status`: a run
stopped at a NaN or by an exception failed; one interrupted by the user (Ctrl-C) neither succeeded nor failed."""

BIAS_STATS = ("mean", "median", "p05", "p95", "mae", "rmse", "max_abs")
"""Statistics of `record.prediction`'s `amplitude_bias` and `phase_bias` (see `stats.amplitude_bias`)."""


class Column(NamedTuple):
    name: str
    kind: str
    description: str


_FIXED = [
    Column("scenario", HPARAM, "the run's name (RunRecord.scenario)"),
    Column("status", INFO, "completed, stopped_nan, failed, interrupted or running"),
    Column("run_dir", INFO, "the run directory"),
    Column("started_at", INFO, "when the run started (UTC)"),
    Column("nphotons", HPARAM, "expected photons per pattern (config)"),
    Column("N", HPARAM, "patch size (config)"),
    Column("gridsize", HPARAM, "patterns per group along each axis (config)"),
    Column("intensity_scale", HPARAM, "the configured intensity scale (config)"),
    Column("intensity_scale_trainable", HPARAM, "whether the configuration says log_scale is trainable"),
    Column("learning_rate", HPARAM, "the optimizer's learning rate at train begin"),
    Column("batch_size", HPARAM, "batch size (config['batch_size'], when given)"),
    Column("optimizer", HPARAM, "the optimizer's class name"),
    Column("keras_version", HPARAM, "the Keras version that trained (tf_keras: 2.x)"),
    Column("epochs", METRIC, "epochs completed"),
    Column("trained_scale", METRIC, "exp(log_scale) at the end of training"),
    Column("scale_ratio", METRIC, "trained exp(log_scale) / configured intensity_scale"),
    *[Column(f"amp_bias_{stat}", METRIC, f"amplitude bias (prediction - truth): {stat}") for stat in BIAS_STATS],
    Column("amp_bias_pearson_r", METRIC, "Pearson correlation of predicted and true amplitude"),
    *[Column(f"phase_bias_{stat}", METRIC, f"phase bias (wrapped prediction - truth): {stat}") for stat in BIAS_STATS],
    Column("went_nan", METRIC, "whether training went NaN/Inf (1 or 0 in TensorBoard)"),
    Column("nan_step", METRIC, f"global step of the first NaN/Inf event; {NO_NAN_STEP} when it never went NaN"),
]
FIXED_COLUMNS = {column.name: column for column in _FIXED}
"""The columns every run has (a value may be None); the per-loss ones are `PATTERN_COLUMNS`."""

PATTERN_COLUMNS = (
    Column("weight_<loss>", HPARAM, "the weight of each loss component (config['loss_weights'])"),
    Column("final_<loss>", METRIC, "the last epoch's value of `loss` and each component (NaN when it went NaN)"),
    Column("best_<loss>", METRIC, "the lowest finite epoch value of `loss` and each component"),
)
"""Columns made per loss name: `loss`, each component (`pred_intensity_loss`, ...), `val_...` with validation."""


def _number(value: Any) -> float | int | None:
    """A finite int or float (not a bool), else None; integral floats stay floats."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _finite(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if _number(v) is not None]


def loss_names(record: RunRecord) -> list[str]:
    """`loss`, the weighted components, then every other logged `..._loss` (validation too), in that order."""
    weights = record.config.get("loss_weights")
    names = ["loss"] + [name for name in (weights if isinstance(weights, dict) else {}) if name != "loss"]
    names += sorted(name for name in record.history if name.endswith("_loss") or name == "val_loss")
    return list(dict.fromkeys(names))


def went_nan(record: RunRecord) -> bool:
    """True when a NaN event was recorded, the status says so, or a logged value is not finite."""
    if record.nan_events or record.status == "stopped_nan":
        return True
    return any(isinstance(v, float) and not math.isfinite(v)
               for series in record.history.values() if isinstance(series, list) for v in series)


def _learning_rate(record: RunRecord) -> float | None:
    configured = _number(record.config.get("learning_rate"))
    if configured is not None:
        return configured
    for key in ("lr", "learning_rate"):  # records written before train begin noted it: the first epoch's
        values = _finite(record.history.get(key))
        if values:
            return values[0]
    return None


def _bias(record: RunRecord, key: str) -> dict:
    summary = record.prediction.get(key) if isinstance(record.prediction, dict) else None
    return summary if isinstance(summary, dict) and summary.get("count") else {}


def _scale(record: RunRecord) -> tuple[float | None, float | None]:
    """(trained exp(log_scale), its ratio to the configured scale); None where undefined."""
    if not record.log_scale.get("found"):
        return None, None
    raw = _number(record.log_scale.get("final"))
    if raw is None:
        return None, None
    try:
        trained = math.exp(raw)
    except OverflowError:
        return None, None
    configured = _number(record.config.get("intensity_scale"))
    return trained, (trained / configured if configured else None)


def _nan_step(record: RunRecord, nan: bool) -> int | None:
    if not nan:
        return NO_NAN_STEP
    for event in record.nan_events:
        step = event.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None  # it went NaN, and no event says at which step


def row(record: RunRecord) -> dict[str, Any]:
    """{column name: value} of one run: every fixed column (None when unknown) and its per-loss columns.

    Values are str, bool, int or float; a final loss may be NaN.
    """
    config = record.config
    values: dict[str, Any] = {
        "scenario": record.scenario,
        "status": record.status,
        "run_dir": record.base_dir,
        "started_at": record.started_at,
        "nphotons": _number(config.get("nphotons")),
        "N": _number(config.get("N")),
        "gridsize": _number(config.get("gridsize")),
        "intensity_scale": _number(config.get("intensity_scale")),
        "intensity_scale_trainable": config.get("intensity_scale_trainable")
        if isinstance(config.get("intensity_scale_trainable"), bool) else None,
        "learning_rate": _learning_rate(record),
        "batch_size": _number(config.get("batch_size")),
        "optimizer": _text(config.get("optimizer")),
        "keras_version": _text(config.get("keras_version")),
        "epochs": len(record.history["loss"]) if isinstance(record.history.get("loss"), list) else 0,
    }
    values["trained_scale"], values["scale_ratio"] = _scale(record)
    for key, prefix, extra in (("amplitude_bias", "amp_bias", ("pearson_r",)), ("phase_bias", "phase_bias", ())):
        summary = _bias(record, key)
        for stat in BIAS_STATS + extra:
            values[f"{prefix}_{stat}"] = _number(summary.get(stat))
    nan = went_nan(record)
    values["went_nan"] = nan
    values["nan_step"] = _nan_step(record, nan)
    weights = config.get("loss_weights") if isinstance(config.get("loss_weights"), dict) else {}
    for name, weight in weights.items():
        values[f"weight_{name}"] = _number(weight)
    for name in loss_names(record):
        series = record.history.get(name)
        last = series[-1] if isinstance(series, list) and series else None
        values[f"final_{name}"] = float(last) if isinstance(last, (int, float)) and not isinstance(last, bool) \
            else None
        finite = _finite(series)
        values[f"best_{name}"] = min(finite) if finite else None
    return values


def columns(record: RunRecord) -> list[Column]:
    """The columns of one run: the fixed ones, then its loss weights and per-loss outcomes."""
    weights = record.config.get("loss_weights")
    made = [Column(f"weight_{name}", HPARAM, f"the weight of {name}")
            for name in (weights if isinstance(weights, dict) else {})]
    for name in loss_names(record):
        made += [Column(f"final_{name}", METRIC, f"the last epoch's {name}"),
                 Column(f"best_{name}", METRIC, f"the lowest finite epoch value of {name}")]
    return list(FIXED_COLUMNS.values()) + made


def hparam_values(record: RunRecord) -> dict[str, bool | float | int | str]:
    """The hyperparameters of the run that are known (HParams leaves an unknown one blank)."""
    values = row(record)
    return {column.name: values[column.name] for column in columns(record)
            if column.kind == HPARAM and values.get(column.name) is not None}


def metric_values(record: RunRecord) -> dict[str, float]:
    """{TensorBoard tag: value} of the run's outcomes that are known and finite (HParams holds no NaN)."""
    values = row(record)
    metrics = {}
    for column in columns(record):
        value = values.get(column.name)
        if column.kind != METRIC or value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            metrics[METRIC_TAG_PREFIX + column.name] = value
    return metrics


def session_status(record: RunRecord) -> str:
    """The HParams session status name of the run (`SESSION_STATUS`; unknown statuses: STATUS_UNKNOWN)."""
    return SESSION_STATUS.get(record.status, "STATUS_UNKNOWN")


def trial_id(record: RunRecord) -> str:
    """The HParams session group of the run: its own (two runs with equal hyperparameters stay two rows)."""
    return f"{record.scenario} {record.started_at}"
