"""The PNG figures of a run, and of several runs side by side, with their section of the report.

The figures beside `report.md` (in `<run>/figures/`):

- `prediction.png`: amplitude and phase of one probe sample, prediction and
  truth on one colour scale, and their bias maps (prediction - truth; the
  phase difference wrapped into (-pi, pi]);
- `bias_histograms.png`: the amplitude and phase bias over every pixel of
  the probe batch;
- `losses.png`: the total loss and each loss component on axes of their own
  (PtychoPINN's Poisson NLL is about -4e6 while the MAE is about 100), per
  batch and per epoch;
- `log_scale.png`: `log_scale` and `exp(log_scale)` against the configured
  scale, per epoch;
- `stage_means.png`: the mean of every stage along the data path.

`write_comparison_figures` draws several records side by side (loss curves
and `log_scale` per epoch), for a report comparing runs.

Plotting takes numpy arrays and `RunRecord`s and imports numpy only at
import time: matplotlib is an optional extra (`pip install
'ptycho_callbacks[plots]'`), imported when a figure is drawn, and drawn
with its Agg canvas (no pyplot, no change to the user's backend). Without
it nothing is drawn and the report's figures section says how to get them.
Missing data (no truth, no epoch, a NaN loss) never raises: a figure without
data is not drawn and says why; NaN and Inf are left out of axes and colour
scales, and NaN events are marked.

Example:

```python
figures = write_run_figures(record, "runs/gs2/figures", prediction=pred, truth=truth)
print("\\n".join(figures_section(figures, "runs/gs2")))
```
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from . import stats
from .record import RunRecord
from .run_dir import (FIGURE_BIAS_HISTOGRAMS, FIGURE_COMPARE_LOG_SCALE, FIGURE_COMPARE_LOSSES, FIGURE_LOG_SCALE,
                      FIGURE_LOSSES, FIGURE_PREDICTION, FIGURE_STAGE_MEANS, FIGURES_FOLDER)

FIGURES_ENV = "PTYCHO_CALLBACKS_FIGURES"
"""Environment variable: `0` draws no figures unless asked for explicitly (the tests set it)."""

INSTALL_HINT = "pip install 'ptycho_callbacks[plots]'"
"""The one command that brings the figures (matplotlib, the `plots` extra)."""

DPI = 110
"""Pixels per inch of every figure: 9.5 inches wide is about 1050 pixels, sharp on a laptop and in print."""

WIDTH = 9.5
"""Width of every figure in inches."""

FONT_SIZE = 9

TITLES = {
    FIGURE_PREDICTION: "Prediction vs truth: amplitude and phase of one probe sample, with the bias maps",
    FIGURE_BIAS_HISTOGRAMS: "Amplitude and phase bias (prediction − truth) over the probe batch",
    FIGURE_LOSSES: "Loss and loss components over training, each on its own axis",
    FIGURE_LOG_SCALE: "log_scale and exp(log_scale) over training, against the configured scale",
    FIGURE_STAGE_MEANS: "Stage means along the data path",
    FIGURE_COMPARE_LOSSES: "Loss and loss components per epoch, the runs side by side",
    FIGURE_COMPARE_LOG_SCALE: "exp(log_scale) per epoch, the runs side by side",
}
"""What each figure shows (its alt text in the report), by file name."""

RUN_FIGURES = (FIGURE_PREDICTION, FIGURE_BIAS_HISTOGRAMS, FIGURE_LOSSES, FIGURE_LOG_SCALE, FIGURE_STAGE_MEANS)
"""The figures of one run, in report order."""

COMPARISON_FIGURES = (FIGURE_COMPARE_LOSSES, FIGURE_COMPARE_LOG_SCALE)
"""The figures comparing runs, in report order."""


@dataclasses.dataclass(frozen=True)
class FigureFile:
    """One figure: `name` (file name), `title`, and `path` where it was written or `reason` it was not."""

    name: str
    title: str
    path: str | None = None
    reason: str | None = None


def wanted(figures: bool | None = None) -> bool:
    """Whether to draw figures: `figures` when given, else unless `PTYCHO_CALLBACKS_FIGURES` is `0`."""
    return os.environ.get(FIGURES_ENV, "1").strip() != "0" if figures is None else bool(figures)


def missing_matplotlib() -> str | None:
    """Why no figure can be drawn here (matplotlib cannot be imported), or None when it can."""
    try:
        importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as error:
        return f"matplotlib is not installed ({type(error).__name__})"
    return None


# ---------------------------------------------------------------- helpers
def _new_figure(height: float, ncols: int = 1, nrows: int = 1, left: float = 0.8, right: float = 0.2,
                top: float = 0.6, bottom: float = 0.55, wspace: float = 0.25, hspace: float = 0.5, **kwargs):
    """A matplotlib Figure on an Agg canvas (no pyplot: the user's backend stays as it is), and its axes.

    Margins are in inches (a fixed layout: matplotlib's constrained layout
    would double the time a figure takes); `wspace` and `hspace` are
    fractions of an axes' width and height, as in `subplots_adjust`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    figure.subplots_adjust(left=left / WIDTH, right=1 - right / WIDTH, top=1 - top / height, bottom=bottom / height,
                           wspace=wspace, hspace=hspace)
    return figure, axes


def _save(figure, path: str) -> str:
    """Writes `figure` as a PNG to `path` atomically (a temporary file, then a rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=DPI, metadata={"Software": "ptycho_callbacks"})
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def plain(text: Any) -> str:
    """`text` safe as a matplotlib label: no mathtext (`$`), and not hidden from legends (a leading `_`)."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _mapping(value: Any) -> Mapping:
    """`value` if it is a dict, else an empty one (a record from someone else may hold anything there)."""
    return value if isinstance(value, dict) else {}


def _series(values: Any) -> np.ndarray:
    """A list of logged values as float64, anything that is not a number as NaN."""
    if not isinstance(values, (list, tuple)):
        return np.zeros(0)
    return np.array([stats.finite_or_none(v) if not isinstance(v, bool) else None for v in values],
                    dtype=np.float64)


def _integer_x(ax, first: float, last: float) -> None:
    """Whole numbers on the x axis (steps, epochs) from `first` to `last`, also for a single point."""
    from matplotlib.ticker import MaxNLocator

    if math.isfinite(first) and math.isfinite(last):
        pad = max(0.5, 0.03 * (last - first))
        ax.set_xlim(first - pad, last + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True,
            fontsize=FONT_SIZE, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _first_panel(array: Any, sample: int = 0) -> np.ndarray | None:
    """The 2-D image of `sample` (first channel) of a (k, H, W[, C]) or (H, W) array; None if it has none."""
    a = np.asarray(array)
    if a.ndim == 4:
        a = a[..., 0]
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[0] > sample:
        return a[sample]
    return None


def _finite_range(*arrays: np.ndarray) -> tuple[float, float] | None:
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    return low, high


def _image(figure, ax, panel: np.ndarray, title: str, unit: str, cmap: str,
           limits: tuple[float, float] | None) -> None:
    """One image with its colour bar; non-finite pixels grey; a panel without finite pixels says so."""
    ax.set_title(plain(title), fontsize=FONT_SIZE + 1)
    if limits is None:
        _no_data(ax, "no finite pixel")
        return
    from matplotlib import colormaps

    colours = colormaps[cmap].with_extremes(bad="0.6")
    image = ax.imshow(np.ma.masked_invalid(panel), cmap=colours, vmin=limits[0], vmax=limits[1],
                      interpolation="nearest", origin="upper")
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    bar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(unit)


def _symmetric(*arrays: np.ndarray) -> tuple[float, float] | None:
    found = _finite_range(*arrays)
    if found is None:
        return None
    edge = max(abs(found[0]), abs(found[1])) or 1.0
    return -edge, edge


# ---------------------------------------------------------------- one run
def prediction_figure(prediction: Any, truth: Any, path: str, sample: int = 0, heading: str = "") -> str | None:
    """Draws prediction and truth of one probe sample (amplitude and phase) with their bias maps.

    Args:
        prediction, truth: arrays of the same shape, (k, H, W[, C]) or (H, W),
            complex (amplitude and phase) or real (amplitude only: the phase
            row says it was not compared). The first channel is drawn.
        path: the PNG to write.
        sample: which sample of the batch.
        heading: the figure's title (the run, the step).

    Returns:
        `path`, or None when the arrays hold no image (nothing written).
    """
    pred_panel, truth_panel = _first_panel(prediction, sample), _first_panel(truth, sample)
    if pred_panel is None or truth_panel is None or pred_panel.shape != truth_panel.shape:
        return None
    figure, axes = _new_figure(6.2, ncols=3, nrows=2, left=0.6, right=0.85, top=0.65, bottom=0.45, wspace=0.45,
                               hspace=0.32)
    pred_amp, truth_amp = np.abs(pred_panel).astype(np.float64), np.abs(truth_panel).astype(np.float64)
    with np.errstate(all="ignore"):
        amp_bias = pred_amp - truth_amp
    shared = _finite_range(pred_amp, truth_amp)
    _image(figure, axes[0, 0], pred_amp, "amplitude: prediction", "amplitude (a.u.)", "viridis", shared)
    _image(figure, axes[0, 1], truth_amp, "amplitude: truth", "amplitude (a.u.)", "viridis", shared)
    _image(figure, axes[0, 2], amp_bias, "amplitude: pred − truth", "Δ amplitude (a.u.)", "RdBu_r",
           _symmetric(amp_bias))
    if np.iscomplexobj(pred_panel) and np.iscomplexobj(truth_panel):
        pred_phase, truth_phase = np.angle(pred_panel), np.angle(truth_panel)
        phase_bias = stats.wrap_phase(pred_phase - truth_phase)
        phase_bias[~(np.isfinite(pred_phase) & np.isfinite(truth_phase))] = np.nan
        limits = (-math.pi, math.pi)
        _image(figure, axes[1, 0], pred_phase, "phase: prediction", "phase (rad)", "twilight", limits)
        _image(figure, axes[1, 1], truth_phase, "phase: truth", "phase (rad)", "twilight", limits)
        _image(figure, axes[1, 2], phase_bias, "phase: pred − truth, wrapped", "Δ phase (rad)", "RdBu_r",
               _symmetric(phase_bias))
    else:
        for ax in axes[1]:
            _no_data(ax, "phase not compared:\nprediction or truth is real")
    for ax in axes[:, 1:].ravel():
        ax.set_ylabel("")  # the left column says it; here it would run into the colour bar's label
    figure.suptitle(plain(heading or "Prediction vs truth"), fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def _histogram(ax, values: np.ndarray, label: str, unit: str) -> None:
    values = values[np.isfinite(values)]
    ax.set_title(plain(label), fontsize=FONT_SIZE + 1)
    if values.size == 0:
        _no_data(ax, "no pixel where prediction and truth are finite")
        return
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    ax.hist(values, bins=60, range=(low, high), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", linewidth=1, label="0 (no bias)")
    ax.axvline(float(np.mean(values)), color="tab:red", linestyle="--", linewidth=1.2,
               label=f"mean {float(np.mean(values)):.4g}")
    ax.axvline(float(np.median(values)), color="tab:orange", linestyle=":", linewidth=1.5,
               label=f"median {float(np.median(values)):.4g}")
    ax.set_xlabel(unit)
    ax.set_ylabel("pixels")
    ax.legend(fontsize=FONT_SIZE - 1)


def bias_histograms_figure(prediction: Any, truth: Any, path: str, heading: str = "") -> str | None:
    """Draws the histograms of the amplitude bias and the (wrapped) phase bias over every pixel.

    Returns:
        `path`, or None when prediction and truth differ in shape or are empty (nothing written).
    """
    pred, true = np.asarray(prediction), np.asarray(truth)
    if pred.shape != true.shape or pred.size == 0:
        return None
    figure, axes = _new_figure(3.4, ncols=2, left=0.7, wspace=0.22)
    with np.errstate(all="ignore"):
        amp_bias = (np.abs(pred).astype(np.float64) - np.abs(true).astype(np.float64)).ravel()
    _histogram(axes[0, 0], amp_bias, "amplitude bias: |prediction| − |truth|", "Δ amplitude (a.u.)")
    if np.iscomplexobj(pred) and np.iscomplexobj(true):
        with np.errstate(all="ignore"):
            phase_bias = stats.wrap_phase(np.angle(pred) - np.angle(true)).ravel()
        _histogram(axes[0, 1], phase_bias, "phase bias: prediction − truth, wrapped into (−π, π]", "Δ phase (rad)")
    else:
        axes[0, 1].set_title("phase bias", fontsize=FONT_SIZE + 1)
        _no_data(axes[0, 1], "phase not compared:\nprediction or truth is real")
    figure.suptitle(plain(heading or "Bias over the probe batch"), fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def _loss_names(record: RunRecord) -> list[str]:
    """`loss` first, then each component (the loss weights' order, then any other `*_loss`)."""
    logged = [name for name in list(record.history) + list(record.batch_history)
              if isinstance(name, str) and not name.startswith("val_") and (name == "loss" or name.endswith("_loss"))]
    weights = _mapping(record.config.get("loss_weights"))
    ordered = ["loss"] + [name for name in weights if isinstance(name, str)] + logged
    return [name for name in dict.fromkeys(ordered) if name in logged]


def _nan_steps(record: RunRecord) -> list[int]:
    return [event["step"] for event in record.nan_events
            if isinstance(event, dict) and isinstance(event.get("step"), int) and not isinstance(event["step"], bool)]


def _nan_note(nan_steps: Sequence[int]) -> str:
    return f"\n(NaN/Inf at step {', '.join(map(str, nan_steps))})" if nan_steps else ""


def _plot_line(ax, x: np.ndarray, y: np.ndarray, mark_nonfinite: bool = False, **kwargs) -> bool:
    """Plots y against x (NaN/Inf as gaps, a lone finite point as a marker; with `mark_nonfinite` a dotted red
    line at each non-finite value); False when nothing is finite."""
    finite = np.isfinite(y)
    if not finite.any():
        return False
    ax.plot(x, np.where(finite, y, np.nan), marker="o" if finite.sum() < 30 else None, markersize=3, **kwargs)
    if mark_nonfinite:
        for index, position in enumerate(x[~finite]):
            ax.axvline(position, color="tab:red", linestyle=":", linewidth=1.2,
                       label="non-finite value" if index == 0 else None)
    return True


def _weight_text(weights: Mapping, name: str) -> str:
    if name == "loss":
        return "total loss (as Keras logs it)"
    weight = stats.finite_or_none(weights.get(name)) if isinstance(weights, Mapping) else None
    return f"{name} (weight {weight:g})" if weight is not None else name


def losses_figure(record: RunRecord, path: str) -> str | None:
    """Draws the total loss and each component on axes of their own: per batch (left) and per epoch (right).

    Per batch: the record's `batch_history` against the optimizer step, with
    the NaN events' steps marked. Per epoch: `history` against the epochs
    completed, validation dashed. A non-finite value is a gap in its line.

    Returns:
        `path`, or None when no loss was recorded (nothing written).
    """
    names = _loss_names(record)
    if not names:
        return None
    steps = _series(record.batch_steps)
    weights = _mapping(record.config.get("loss_weights"))
    figure, axes = _new_figure(1.2 + 2.1 * len(names), ncols=2, nrows=len(names), top=0.8, hspace=0.8, wspace=0.22)
    nan_steps = _nan_steps(record)
    for row, name in enumerate(names):
        left, right = axes[row]
        left.set_title(plain(f"{_weight_text(weights, name)}: per batch"), fontsize=FONT_SIZE + 1)
        right.set_title(plain(f"{_weight_text(weights, name)}: per epoch"), fontsize=FONT_SIZE + 1)
        batch = _series(record.batch_history.get(name))
        if batch.size and batch.size == steps.size and _plot_line(left, steps, batch, color="tab:blue",
                                                                  linewidth=1):
            for step in nan_steps:
                left.axvline(step, color="tab:red", linestyle="--", linewidth=1,
                             label=f"NaN/Inf at step {step}")
            if nan_steps:
                left.legend(fontsize=FONT_SIZE - 1)
            left.set_xlabel("optimizer step")
            left.set_ylabel("loss value")
            _integer_x(left, float(np.nanmin(steps)), float(np.nanmax(np.append(steps, nan_steps))))
        else:
            _no_data(left, "no finite per-batch value recorded" + _nan_note(nan_steps))
        epoch_values = _series(record.history.get(name))
        drawn = _plot_line(right, np.arange(1, epoch_values.size + 1), epoch_values, mark_nonfinite=True,
                           color="tab:blue", label="train")
        validation = _series(record.history.get(f"val_{name}"))
        drawn_val = _plot_line(right, np.arange(1, validation.size + 1), validation, color="tab:green",
                               linestyle="--", label="validation")
        if drawn or drawn_val:
            right.set_xlabel("epochs completed")
            right.set_ylabel("loss value")
            _integer_x(right, 1, max(epoch_values.size, validation.size))
            if drawn_val or not np.isfinite(epoch_values).all():
                right.legend(fontsize=FONT_SIZE - 1)
        else:
            _no_data(right, "no finite epoch value recorded" + _nan_note(nan_steps))
    figure.suptitle(plain(f"{record.scenario}: loss components (raw values; each on its own axis)"),
                    fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def _log_scale_series(state: Mapping) -> np.ndarray:
    """`log_scale` at train begin, then at each epoch end (NaN where the record holds no number)."""
    history = state.get("history")
    return _series([state.get("initial")] + (history if isinstance(history, list) else []))


def log_scale_figure(record: RunRecord, path: str) -> str | None:
    """Draws `log_scale` (top) and `exp(log_scale)` (bottom) per epoch, the train-begin value at epoch 0,
    against the configured scale.

    Returns:
        `path`, or None when no `log_scale` was watched (nothing written).
    """
    state = record.log_scale or {}
    if not state.get("found"):
        return None
    values = _log_scale_series(state)
    configured = stats.finite_or_none(record.config.get("intensity_scale"))
    figure, axes = _new_figure(5.0, nrows=2, sharex=True, hspace=0.35)
    top, bottom = axes[0, 0], axes[1, 0]
    epochs = np.arange(values.size)
    with np.errstate(all="ignore"):
        scale = np.exp(values)
    drawn = _plot_line(top, epochs, values, color="tab:purple", label="log_scale")
    _plot_line(bottom, epochs, scale, color="tab:purple", label="exp(log_scale)")
    if configured is not None and configured > 0:
        top.axhline(math.log(configured), color="0.3", linestyle="--", linewidth=1,
                    label=f"log(configured scale) = {math.log(configured):.4g}")
        bottom.axhline(configured, color="0.3", linestyle="--", linewidth=1,
                       label=f"configured scale = {configured:.4g}")
    if not drawn:
        _no_data(top, "log_scale never finite")
    else:
        top.legend(fontsize=FONT_SIZE - 1)
        bottom.legend(fontsize=FONT_SIZE - 1)
    top.set_title("log_scale (the IntensityScaler's variable)", fontsize=FONT_SIZE + 1)
    top.set_ylabel("log_scale (ln of the scale)")
    bottom.set_title("exp(log_scale): the factor the input is divided by", fontsize=FONT_SIZE + 1)
    bottom.set_ylabel("intensity scale")
    bottom.set_xlabel("epochs completed (0 = train begin)")
    _integer_x(bottom, 0, values.size - 1)
    trained = ("among the trainable variables" if state.get("in_trainable_variables")
               else "not among the trainable variables: never trained")
    figure.suptitle(plain(f"{record.scenario}: log_scale over training ({trained})"), fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def stage_means_figure(record: RunRecord, path: str) -> str | None:
    """Draws the mean of every stage along the data path (bars, ±std as error bars), with the ratio of
    each stage's mean to the previous one's.

    Returns:
        `path`, or None when the record holds no stage (nothing written).
    """
    stages = [s for s in record.stages if isinstance(s, dict)]
    if not stages:
        return None
    labels = [plain(s.get("label") or s.get("name") or "?") for s in stages]
    means = _series([_mapping(s.get("stats")).get("mean") for s in stages])
    stds = _series([_mapping(s.get("stats")).get("std") for s in stages])
    figure, axes = _new_figure(4.2, top=0.4, bottom=1.05)
    ax = axes[0, 0]
    x = np.arange(len(stages))
    finite = np.isfinite(means)
    heights = np.where(finite, means, 0.0)
    errors = np.where(np.isfinite(stds) & finite, stds, 0.0)
    ax.bar(x, heights, yerr=errors, color=["tab:blue" if ok else "white" for ok in finite],
           edgecolor="tab:blue", capsize=3, error_kw={"elinewidth": 0.8, "ecolor": "0.4"})
    positive = means[finite & (means > 0)]
    if positive.size and finite.all() and (means[finite] > 0).all() and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    for i, mean in enumerate(means):
        text = f"{mean:.4g}" if np.isfinite(mean) else "n/a"
        ax.annotate(text, (i, heights[i]), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize=FONT_SIZE - 1)
    for i in range(1, len(stages)):
        previous, current = means[i - 1], means[i]
        if np.isfinite(previous) and np.isfinite(current) and previous != 0:
            ax.annotate(f"×{current / previous:.3g}", (i - 0.5, 1), xycoords=("data", "axes fraction"),
                        xytext=(0, -4), textcoords="offset points", ha="center", va="top", fontsize=FONT_SIZE - 1,
                        color="tab:red", bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"})
    ax.margins(y=0.25)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("mean value (the stage's units; |x| if complex)")
    ax.set_xlabel("stage (data path order); red: ratio of a stage's mean to the previous one's")
    ax.set_title(plain(f"{record.scenario}: stage means (error bars: ±std)"), fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def _heading(record: RunRecord, step: Any) -> str:
    at = f", step {step}" if isinstance(step, int) and not isinstance(step, bool) else ""
    return f"{record.scenario}: prediction vs truth, probe sample 0{at}"


def _drawn(name: str, directory: str, draw, reason: str) -> FigureFile:
    """Draws one figure to `directory/name`; when it has no data, a file of that name left by an earlier
    fit goes, so that the folder holds only what this report links."""
    target = os.path.join(directory, name)
    path = draw(target)
    if path is None and os.path.isfile(target):
        os.remove(target)
    return FigureFile(name, TITLES[name], path=path, reason=None if path else reason)


def write_run_figures(record: RunRecord, directory: str, prediction: Any = None, truth: Any = None,
                      step: int | None = None) -> list[FigureFile]:
    """Draws every figure of one run into `directory` (created), those without data left out with a reason.

    Args:
        record: the run's record (losses, `log_scale`, stages).
        directory: where the PNGs go (the run's `figures/`).
        prediction, truth: the probe batch's prediction and its truth
            (numpy arrays of one shape), for the prediction and bias figures;
            None leaves those two out.
        step: the optimizer step of the prediction, for its title.

    Returns:
        One `FigureFile` per figure, in report order. Nothing is drawn, and
        each says why, when matplotlib is missing.

    Raises:
        OSError: a file cannot be written.
    """
    missing = missing_matplotlib()
    if missing:
        return [FigureFile(name, TITLES[name], reason=missing) for name in RUN_FIGURES]
    has_pair = prediction is not None and truth is not None
    no_truth = "no prediction compared with a truth (pass `probe=Probe(inputs, truth=...)`)"
    return [
        _drawn(FIGURE_PREDICTION, directory, lambda path: prediction_figure(
            prediction, truth, path, heading=_heading(record, step)) if has_pair else None, no_truth),
        _drawn(FIGURE_BIAS_HISTOGRAMS, directory, lambda path: bias_histograms_figure(
            prediction, truth, path, heading=f"{record.scenario}: bias over the probe batch")
            if has_pair else None, no_truth),
        _drawn(FIGURE_LOSSES, directory, lambda path: losses_figure(record, path), "no loss recorded"),
        _drawn(FIGURE_LOG_SCALE, directory, lambda path: log_scale_figure(record, path), "no log_scale watched"),
        _drawn(FIGURE_STAGE_MEANS, directory, lambda path: stage_means_figure(record, path),
               "no data-path stage given (pass `stages=[...]`)"),
    ]


# ---------------------------------------------------------------- several runs
def _run_colours(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(count)]


def compare_losses_figure(records: Sequence[RunRecord], path: str) -> str | None:
    """Draws each run's loss and loss components per epoch, one axis per series, the runs as lines.

    Returns:
        `path`, or None when no record holds a loss (nothing written).
    """
    names = list(dict.fromkeys(name for record in records for name in _loss_names(record)
                               if name in record.history))
    if not names:
        return None
    columns = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / columns)
    figure, axes = _new_figure(1.1 + 2.6 * rows, ncols=columns, nrows=rows, hspace=0.55, wspace=0.22)
    colours = _run_colours(len(records))
    for index, name in enumerate(names):
        ax = axes[index // columns, index % columns]
        ax.set_title(plain(name if name != "loss" else "total loss"), fontsize=FONT_SIZE + 1)
        drawn, absent = False, []
        for record, colour in zip(records, colours):
            values = _series(record.history.get(name))
            label = record.scenario + ("" if np.isfinite(values).all() else " (non-finite values left out)")
            if _plot_line(ax, np.arange(1, values.size + 1), values, color=colour, label=plain(label)):
                drawn = True
            elif name in record.history:
                absent.append(record.scenario)
        if drawn and absent:
            ax.text(0.01, 0.02, plain(f"no finite value: {', '.join(absent)}"), transform=ax.transAxes,
                    fontsize=FONT_SIZE - 1, color="tab:red", va="bottom")
        if drawn:
            ax.set_xlabel("epochs completed")
            ax.set_ylabel("loss value")
            _integer_x(ax, 1, max(_series(record.history.get(name)).size for record in records))
            ax.legend(fontsize=FONT_SIZE - 1)
        else:
            _no_data(ax, "no finite value in any run")
    for index in range(len(names), rows * columns):
        axes[index // columns, index % columns].set_visible(False)
    figure.suptitle(f"Loss components per epoch, {len(records)} run(s)", fontsize=FONT_SIZE + 2)
    return _save(figure, path)


def compare_log_scale_figure(records: Sequence[RunRecord], path: str) -> str | None:
    """Draws each run's exp(log_scale) per epoch (0 = train begin), its configured scale dotted.

    Returns:
        `path`, or None when no record watched `log_scale` (nothing written).
    """
    watched = [(record, colour) for record, colour in zip(records, _run_colours(len(records)))
               if (record.log_scale or {}).get("found")]
    if not watched:
        return None
    figure, axes = _new_figure(4.0, top=0.4)
    ax = axes[0, 0]
    for record, colour in watched:
        values = _log_scale_series(record.log_scale)
        with np.errstate(all="ignore"):
            scale = np.exp(values)
        _plot_line(ax, np.arange(values.size), scale, color=colour, label=plain(record.scenario))
        configured = stats.finite_or_none(record.config.get("intensity_scale"))
        if configured is not None:
            ax.axhline(configured, color=colour, linestyle=":", linewidth=1,
                       label=plain(f"{record.scenario}: configured {configured:.4g}"))
    ax.set_xlabel("epochs completed (0 = train begin)")
    ax.set_ylabel("exp(log_scale) (intensity scale)")
    _integer_x(ax, 0, max(_series(record.log_scale.get("history")).size for record, _ in watched))
    ax.set_title(f"exp(log_scale) per epoch, {len(watched)} run(s)", fontsize=FONT_SIZE + 2)
    ax.legend(fontsize=FONT_SIZE - 1)
    return _save(figure, path)


def write_comparison_figures(records: Sequence[RunRecord], directory: str) -> list[FigureFile]:
    """Draws the runs side by side into `directory` (created): loss curves and `log_scale` per epoch.

    Returns:
        One `FigureFile` per figure; each says why when it is not drawn
        (matplotlib missing, no run with that data).

    Raises:
        OSError: a file cannot be written.
    """
    if isinstance(records, RunRecord):
        records = [records]
    missing = missing_matplotlib()
    if missing:
        return [FigureFile(name, TITLES[name], reason=missing) for name in COMPARISON_FIGURES]
    return [
        _drawn(FIGURE_COMPARE_LOSSES, directory, lambda path: compare_losses_figure(records, path),
               "no run recorded a loss"),
        _drawn(FIGURE_COMPARE_LOG_SCALE, directory, lambda path: compare_log_scale_figure(records, path),
               "no run watched log_scale"),
    ]


# ---------------------------------------------------------------- the report's section
def figures_section(figures: Sequence[FigureFile], report_dir: str | None, heading: str = "## Figures",
                    links: bool = True) -> list[str]:
    """The report's figures section (Markdown lines): each drawn figure linked relative to `report_dir`
    (or named, with `links=False`), each other one with why; without matplotlib one line saying how to get
    them."""
    lines = [heading, ""]
    drawn = [figure for figure in figures if figure.path]
    if not drawn and figures and all(f.reason and f.reason.startswith("matplotlib") for f in figures):
        return lines + [f"Figures: n/a ({figures[0].reason}): `{INSTALL_HINT}` draws them beside this report "
                        "and in TensorBoard's Images tab.", ""]
    for figure in drawn:
        if links:
            target = os.path.relpath(figure.path, report_dir) if report_dir else figure.path
            target = target.replace(os.sep, "/")
            lines += [f"![{figure.title}]({target})", ""]
        else:
            lines.append(f"- {figure.title}: `{FIGURES_FOLDER}/{figure.name}`")
    others = [figure for figure in figures if not figure.path]
    if others:
        lines += [f"- {figure.title}: n/a ({figure.reason})" for figure in others]
    return lines + [""]


def figures_text(figures: Sequence[FigureFile], report_dir: str | None) -> str:
    """The figures section as text to append to a report ending with a newline: "" for no figures; the
    figures linked relative to `report_dir`, or only named when `report_dir` is None (TensorBoard's copy)."""
    if not figures:
        return ""
    return "\n" + "\n".join(figures_section(figures, report_dir, links=report_dir is not None)).rstrip("\n") + "\n"


def existing_figures(run_dir: str) -> list[FigureFile]:
    """The figures of a run found in its `figures/` folder (to link them again when its report is rendered
    anew, as `replay --write` does)."""
    directory = os.path.join(run_dir, FIGURES_FOLDER)
    return [FigureFile(name, TITLES[name], path=os.path.join(directory, name)) for name in RUN_FIGURES
            if os.path.isfile(os.path.join(directory, name))]


def write_comparison_section(records: Sequence[RunRecord], report_path: str) -> str:
    """For a report comparing runs written to `report_path`: draws `write_comparison_figures` into
    `figures/` beside it and returns the Markdown section that links them (with no matplotlib, the one
    line saying how to get them). Append it to the report's text before writing it.

    Raises:
        OSError: a figure cannot be written.
    """
    report_dir = os.path.dirname(os.path.abspath(report_path))
    figures = write_comparison_figures(records, os.path.join(report_dir, FIGURES_FOLDER))
    return "\n".join(figures_section(figures, report_dir, heading="## Figures comparing the runs")).rstrip("\n") + "\n"
