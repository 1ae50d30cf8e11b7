"""The layout of a run directory, and where a new run writes.

Every file and folder name of a run directory is defined here:

```text
<run>/ptycho_run.claim     the claim: this directory is a run's (pid and time; `claim_run_dir`)
<run>/record.json          the RunRecord (SummaryReport)
<run>/report.md            the Markdown report (SummaryReport)
<run>/figures/             its PNG figures, with matplotlib (SummaryReport; `figures.py`)
    prediction.png, bias_histograms.png, losses.png, log_scale.png, stage_means.png
<run>/ptycho/train/        our TensorBoard event files (validation: ptycho/validation/)
<run>/nan_forensics/       the failing step of a NaN (NaNGuard(forensics=True))
    manifest.json, batch.npz, weights_before.npz, optimizer_state.npz, model.keras
```

Starting a second run on the same directory would overwrite the first run's
report; `resolve_run_dir` picks `runs/a-2`, `runs/a-3`, ... instead, unless
the caller asks to overwrite.

Example:

```python
run_dir, note = resolve_run_dir("runs/gs2_base")
if note:
    print(note)   # "runs/gs2_base already holds a run (record.json); this run writes to runs/gs2_base-2"
```
"""

from __future__ import annotations

import datetime
import itertools
import os
from typing import NamedTuple

CLAIM_FILE = "ptycho_run.claim"
RECORD_FILE = "record.json"
REPORT_FILE = "report.md"
TENSORBOARD_FOLDER = "ptycho"
"""Our event files live in `<run>/ptycho/<train|validation>`, apart from Keras's own `TensorBoard`."""
FIGURES_FOLDER = "figures"
"""The report's PNG figures: `<run>/figures/`, and `figures/` beside a report comparing runs."""
FIGURE_PREDICTION = "prediction.png"
FIGURE_BIAS_HISTOGRAMS = "bias_histograms.png"
FIGURE_LOSSES = "losses.png"
FIGURE_LOG_SCALE = "log_scale.png"
FIGURE_STAGE_MEANS = "stage_means.png"
FIGURE_COMPARE_LOSSES = "compare_losses.png"
FIGURE_COMPARE_LOG_SCALE = "compare_log_scale.png"
FORENSICS_FOLDER = "nan_forensics"
FORENSICS_MANIFEST = "manifest.json"
FORENSICS_BATCH = "batch.npz"
FORENSICS_WEIGHTS = "weights_before.npz"
FORENSICS_OPTIMIZER = "optimizer_state.npz"
FORENSICS_MODEL = "model.keras"

RUN_FILES = (RECORD_FILE, REPORT_FILE, CLAIM_FILE)
"""Files whose presence marks a directory as holding a run."""


def tensorboard_dir(log_dir: str | os.PathLike, run: str = "train") -> str:
    """Where our event files for `run` ("train" or "validation") live under `log_dir`."""
    return os.path.join(os.fspath(log_dir), TENSORBOARD_FOLDER, run)


def record_path(log_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(log_dir), RECORD_FILE)


def report_path(log_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(log_dir), REPORT_FILE)


def figures_dir(log_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(log_dir), FIGURES_FOLDER)


class RunDir(NamedTuple):
    """The directory a run should write into, and the one-line note to print (None: nothing to say)."""

    path: str
    note: str | None


def _run_files(directory: str) -> list[str]:
    """The `RUN_FILES` present in `directory`."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(directory, name))]


def _is_free(directory: str) -> bool:
    """True when `directory` does not exist, or is a directory holding no run."""
    if not os.path.exists(directory):
        return True
    return os.path.isdir(directory) and not _run_files(directory)


def resolve_run_dir(log_dir: str | os.PathLike, overwrite: bool = False) -> RunDir:
    """The directory a new run should write into, with a note when it is not `log_dir` as given.

    `log_dir` itself when it does not exist or holds neither `record.json`
    nor `report.md`; otherwise the first free sibling `log_dir-2`,
    `log_dir-3`, ... (a sibling is free when it does not exist or holds no
    run). Nothing is created or removed here: the callbacks create the
    directory.

    Args:
        log_dir: the run directory asked for.
        overwrite: return `log_dir` even when it holds a run (its
            `record.json` and `report.md` will be replaced); the note says so.

    Returns:
        `RunDir(path, note)`: `path` keeps the spelling of `log_dir` (no
        trailing separator); `note` is one line to print, or None when `path`
        is `log_dir` and nothing in it will be overwritten.

    Raises:
        NotADirectoryError: `log_dir` exists and is not a directory.
    """
    requested = os.path.normpath(os.fspath(log_dir))
    if os.path.exists(requested) and not os.path.isdir(requested):
        raise NotADirectoryError(f"log_dir {requested!r} exists and is not a directory; choose another path")
    existing = _run_files(requested) if os.path.isdir(requested) else []
    if not existing:
        return RunDir(requested, None)
    held = " and ".join(existing)
    if overwrite:
        return RunDir(requested, f"{requested} already holds a run ({held}); overwriting it (overwrite=True)")
    for number in itertools.count(2):
        candidate = f"{requested}-{number}"
        if _is_free(candidate):
            return RunDir(candidate, f"{requested} already holds a run ({held}); this run writes to "
                                     f"{candidate} (pass overwrite=True to replace the old run)")


def check_writable_dir(log_dir):
    """Creates `log_dir` and proves it writable now, not hours into a training."""
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OSError(f"log directory {log_dir!r} cannot be written: {error}") from error


def _claim(directory: str, exclusive: bool) -> bool:
    """Creates `directory`'s claim file (only if none exists, when `exclusive`); False when another has it."""
    check_writable_dir(directory)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(os.path.join(directory, CLAIM_FILE), flags, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"pid {os.getpid()} at {datetime.datetime.now(datetime.timezone.utc).isoformat()}\n")
    return True


def claim_run_dir(log_dir: str | os.PathLike, overwrite: bool = False) -> RunDir:
    """Like `resolve_run_dir`, but takes the directory atomically: two processes never get the same one.

    The first free candidate is created with a claim file made with
    `O_EXCL`; when another process claimed it in the meantime, the next
    sibling is tried. With `overwrite`, `log_dir` is claimed whatever it holds.

    Raises:
        NotADirectoryError: `log_dir` exists and is not a directory.
        OSError: the directory cannot be created or written.
    """
    while True:
        chosen = resolve_run_dir(log_dir, overwrite=overwrite)
        if _claim(chosen.path, exclusive=not overwrite):
            return chosen

