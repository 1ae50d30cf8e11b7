"""The `RunRecord`: everything the callbacks observe during one training run.

A `RunRecord` is a plain data holder. The callbacks fill it while `model.fit`
runs and save it as `record.json` in the run directory; the report renderer
(`ptycho_callbacks.render`) reads it back. It imports numpy only.

The JSON file is *standard* JSON: non-finite floats are written as the strings
`"NaN"`, `"Infinity"` and `"-Infinity"` and turned back into floats on load
(so those three strings are reserved and never load back as text).

Example:

```python
record = RunRecord(scenario="gs2_base", config={"nphotons": 1e9, "N": 64})
record.history.setdefault("loss", []).append(float("nan"))
record.add_finding("warning", "log_scale_not_trained", "log_scale never moved")
record.save("runs/gs2_base/record.json")
assert RunRecord.load("runs/gs2_base/record.json") == record
```
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import tempfile
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
"""Version of the JSON layout written by `RunRecord.to_json`."""

STATUSES = ("running", "completed", "stopped_nan", "interrupted", "failed")
"""Allowed values of `RunRecord.status`."""

FINDING_LEVELS = ("warning", "info")
"""Allowed values of a finding's `level`."""

CONTAINER_STAGE = "container_X"
"""Stage name of the training container's X (the model input as trained)."""

PREDICTION_STAGE = "prediction"
"""Stage name of the model's predicted amplitude (after the input stages)."""

TRUTH_STAGE = "truth"
"""Stage name of the ground-truth amplitude (the last stage of the path)."""

_NONFINITE_TO_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class RecordError(ValueError):
    """A record (dict or JSON text) is malformed."""


class RecordVersionError(RecordError):
    """A record was written by a newer, unknown schema version."""


def utc_now_iso() -> str:
    """Current time as an ISO-8601 string in UTC (`...+00:00`)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def to_builtin(value: Any, where: str = "value") -> Any:
    """Convert numpy scalars/arrays, tuples and nested containers to JSON types.

    Floats stay floats (non-finite ones included); dict keys become strings.

    Raises:
        RecordError: for a value JSON cannot represent (the message names
            where it was found, e.g. `history['loss'][3]`).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist(), where)
    if isinstance(value, np.generic):
        return to_builtin(value.item(), where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): to_builtin(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise RecordError(
        f"{where} has type {type(value).__name__}, which a record cannot store; "
        "convert it to a float, int, str, bool, list or dict first"
    )


def encode_nonfinite(value: Any) -> Any:
    """Replace non-finite floats by their reserved strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_nonfinite(v) for v in value]
    return value


def decode_nonfinite(value: Any) -> Any:
    """Inverse of `encode_nonfinite`: reserved strings back to floats."""
    if isinstance(value, str):
        return _NONFINITE_TO_TEXT.get(value, value)
    if isinstance(value, dict):
        return {k: decode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(v) for v in value]
    return value


def _reject_bare_constant(name: str) -> None:
    raise RecordError(f"bare {name} is not standard JSON; write it as the string \"{name}\"")


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask: what `open` would give a new file (`0o777` for a folder)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, readable as any file the user creates (umask).

    The text goes to a temporary file in the same directory, which is flushed,
    fsync'ed and then moved over `path` with `os.replace`: readers see either
    the old file or the complete new one, never a partial write.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())  # mkstemp makes it private (0600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


_FIELD_TYPES = {
    "scenario": (str,),
    "started_at": (str,),
    "ended_at": (str, type(None)),
    "status": (str,),
    "base_dir": (str, type(None)),
    "config": (dict,),
    "history": (dict,),
    "batch_history": (dict,),
    "batch_steps": (list,),
    "log_scale": (dict,),
    "nan_events": (list,),
    "stages": (list,),
    "prediction": (dict,),
    "findings": (list,),
    "physics": (list,),
    "forensics": (dict, type(None)),
}


@dataclasses.dataclass(eq=False)
class RunRecord:
    """What the callbacks observed during one training run.

    Attributes:
        scenario: Short name of the run (one row of the report's table).
        started_at: ISO-8601 UTC time the run started.
        ended_at: ISO-8601 UTC time it ended, `None` while running.
        status: One of `STATUSES`.
        base_dir: Run directory, if any.
        config: Run configuration. Keys the report reads when present:
            `nphotons`, `N`, `gridsize`, `intensity_scale`,
            `intensity_scale_trainable`, `normalize_gain`, `loss_weights`
            (output-loss name -> weight), `e_batch_intensity`, `spec_refs`
            (overrides of the report's spec-reference texts) and `canvas`
            (`{"padded", "required", "fits"}`).
        history: Per-epoch values keyed like Keras logs (`loss`,
            `pred_intensity_loss`, `val_loss`, `lr`, ...), NaN allowed.
        batch_history: Optional per-batch values, same keys as `history`.
        batch_steps: Global optimizer step of each `batch_history` entry.
        log_scale: State of the intensity scaler's `log_scale` variable:
            `variable_name`, `initial`, `final`, `history`,
            `declared_trainable`, `in_trainable_variables`, `moved`, `shared`,
            `found`, `how_found`, `note`. Empty when no scaler was found.
        nan_events: One dict per non-finite loss event: `epoch`, `batch`,
            `step`, `phase`, `components`, `values`, `last_finite`,
            `weights_restored`, `nonfinite_weights`.
        stages: Data-path stages in order, each `{"name", "label", "source",
            "stats"}` with `stats` from `ptycho_callbacks.stats.array_stats`.
        prediction: Prediction-vs-truth summaries: `scaling`,
            `amplitude_bias`, `phase_bias` (outputs of the `stats` functions).
        findings: `{"level", "code", "message"}` dicts, with the optimizer
            `step` where it is known (see `add_finding`).
        physics: One dict per physics-health evaluation (`PhysicsHealth`):
            `epoch`, `step`, `photon_budget`, `nonpositive_fraction`,
            `saturation_fraction` (outputs of `ptycho_callbacks.physics`).
        forensics: What the replay of the failing step found
            (`ptycho_callbacks.forensics.replay`), None without a NaN replay.
    """

    scenario: str
    started_at: str = dataclasses.field(default_factory=utc_now_iso)
    ended_at: str | None = None
    status: str = "running"
    base_dir: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    history: dict = dataclasses.field(default_factory=dict)
    batch_history: dict = dataclasses.field(default_factory=dict)
    batch_steps: list = dataclasses.field(default_factory=list)
    log_scale: dict = dataclasses.field(default_factory=dict)
    nan_events: list = dataclasses.field(default_factory=list)
    stages: list = dataclasses.field(default_factory=list)
    prediction: dict = dataclasses.field(default_factory=dict)
    findings: list = dataclasses.field(default_factory=list)
    physics: list = dataclasses.field(default_factory=list)
    forensics: dict | None = None

    def add_finding(self, level: str, code: str, message: str, step: int | None = None) -> None:
        """Append a finding; `level` is `"warning"` or `"info"`; `step`, the optimizer step it was seen at."""
        if level not in FINDING_LEVELS:
            raise RecordError(f"finding level must be one of {FINDING_LEVELS}, got {level!r}")
        finding = {"level": level, "code": code, "message": message}
        if step is not None:
            finding["step"] = int(step)
        self.findings.append(finding)

    def to_dict(self) -> dict:
        """The record as built-in Python types, with `schema_version`.

        numpy values become floats/ints/lists; non-finite floats stay floats.
        """
        data = {"schema_version": SCHEMA_VERSION}
        for field in dataclasses.fields(self):
            data[field.name] = to_builtin(getattr(self, field.name), field.name)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """Standard JSON text (non-finite floats as `"NaN"`/`"Infinity"`)."""
        return json.dumps(encode_nonfinite(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> "RunRecord":
        """Build a record from `to_dict` output (or decoded JSON).

        Raises:
            RecordVersionError: `schema_version` is newer than `SCHEMA_VERSION`.
            RecordError: anything else is malformed (message says what).
        """
        if not isinstance(data, dict):
            raise RecordError(f"a record must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise RecordError(f"schema_version must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise RecordVersionError(
                f"record schema_version {version} is newer than this ptycho_callbacks "
                f"understands ({SCHEMA_VERSION}); upgrade ptycho_callbacks to read it"
            )
        if version < 1:
            raise RecordError(f"schema_version must be >= 1, got {version}")
        unknown = sorted(set(data) - set(_FIELD_TYPES) - {"schema_version"})
        if unknown:
            raise RecordError(f"unknown record field(s) for schema_version {version}: {', '.join(unknown)}")
        if "scenario" not in data:
            raise RecordError("record has no 'scenario'")
        values = {}
        for name, types in _FIELD_TYPES.items():
            if name not in data:
                continue
            value = decode_nonfinite(data[name])
            if not isinstance(value, types):
                expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise RecordError(f"record field '{name}' must be {expected}, got {type(value).__name__}")
            values[name] = value
        for name in ("nan_events", "stages", "findings", "physics"):
            if not all(isinstance(item, dict) for item in values.get(name, [])):
                raise RecordError(f"every entry of record field '{name}' must be an object")
        for name in ("history", "batch_history"):
            if not all(isinstance(series, list) for series in values.get(name, {}).values()):
                raise RecordError(f"every value of record field '{name}' must be a list")
        if values.get("status", "running") not in STATUSES:
            raise RecordError(f"record status must be one of {STATUSES}, got {values['status']!r}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        """Parse JSON text written by `to_json`.

        Raises:
            RecordError: invalid JSON or a malformed record.
            RecordVersionError: a newer schema version.
        """
        try:
            data = json.loads(text, parse_constant=_reject_bare_constant)
        except json.JSONDecodeError as error:
            raise RecordError(f"invalid JSON: {error}") from None
        except RecursionError:
            raise RecordError("JSON nested too deeply: not a record") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the record as JSON to `path` atomically (see `atomic_write_text`)."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord":
        """Read a record saved by `save`.

        Raises:
            OSError: the file cannot be read.
            RecordError: the content is malformed: not UTF-8 text, not
                JSON, nested too deeply, or not a record (message names the file).
            RecordVersionError: the file has a newer schema version.
        """
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RecordError(f"not UTF-8 text (byte {error.start}): not a record.json") from None
            return cls.from_json(text)
        except RecordError as error:
            raise type(error)(f"{os.fspath(path)}: {error}") from None

    def __eq__(self, other: object) -> bool:
        """Equal when the JSON content is equal (so NaN equals NaN)."""
        if not isinstance(other, RunRecord):
            return NotImplemented
        return encode_nonfinite(self.to_dict()) == encode_nonfinite(other.to_dict())
