"""SummaryReport: the run record and the Markdown report, written as training goes."""

import math
import os
import warnings
from time import monotonic

from .. import figures as run_figures
from ..record import atomic_write_text
from ..render import render_report
from ..run_dir import FIGURES_FOLDER, RECORD_FILE, REPORT_FILE, figures_dir, record_path, report_path
from .base import RecordingCallback, optimizer_step
from .hparams_summary import note_training_setup, write_hparams
from .variables import variable_value

RECORD_TIME_SHARE = 0.02
"""Most share of the training's time spent rewriting record.json at epoch ends. The record grows
(the per-batch values, thousands of epochs) and its rewrite with it, so past that share it is
rewritten less often than every epoch (`benchmarks/hooks.py` measures the epoch end)."""


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a float (schedules evaluated at its step)."""
    rate = getattr(optimizer, "learning_rate", None)
    if rate is None:
        return None
    if callable(rate) and not hasattr(rate, "numpy"):
        rate = rate(optimizer.iterations)
    try:
        return float(variable_value(rate))
    except (TypeError, ValueError):
        return None


class SummaryReport(RecordingCallback):
    """Writes `record.json` as epochs end and `report.md` when training ends.

    The record is written atomically (a temporary file, then a rename) after
    every epoch, so a run that dies leaves what it had. Where epochs are so
    short that this would take more than 2% of the training's time
    (`RECORD_TIME_SHARE`; the record grows with the run), an epoch end
    writes it only once 50 durations of the last write have passed since:
    a run killed outright then loses at most those epochs (a tenth of a
    second for a small record). An exception loses nothing under
    `finish_on_exception` (`default_callbacks` sets it up): the record is
    written as the fit ends. When the run closes (after every other callback
    of ours ended, wherever this one stands in the list) the record is
    written a last time and the report (every section of the intensity-bias
    summary, for this run) next to it, also shown in TensorBoard's Text tab
    under `report/summary`. With matplotlib (`pip install
    'ptycho_callbacks[plots]'`) the report's figures are drawn into
    `figures/` beside it (`ptycho_callbacks.figures`: prediction vs truth,
    bias histograms, losses, `log_scale`, stage means), linked from the
    report and shown in TensorBoard's Images tab under `figures/<name>`;
    without it the report says how to get them. Drawing them takes about a
    second, so it is done off the training thread once `fit` has returned
    (`Run.defer`): report.md is written at once without them, then again
    with them linked. `callback.run.wait()` waits for them; the next fit
    into the same directory and the process's exit wait for them on their
    own. A figure that cannot be drawn or written costs a warning and a
    finding, never the training.

    Args:
        log_dir: the run directory, when `run` is None.
        scenario: the run's name in the report; the directory's name if None.
        config: run configuration for the report (`nphotons`, `N`,
            `gridsize`, `intensity_scale`, `intensity_scale_trainable`,
            `normalize_gain`, `e_batch_intensity`, ...), merged into the record.
        title: the report's title.
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        spec_prefix: the folder of the PtychoPINN specifications the report
            cites (`spec-ptycho-core.md`, ...); None: `docs/specs/`, where
            PtychoPINN's main branch keeps them. From `default_callbacks`:
            `options={"SummaryReport": {"spec_prefix": "specs/"}}`.
        figures: draw the figures; None draws them unless the environment
            variable `PTYCHO_CALLBACKS_FIGURES` is `0`.

    Raises:
        ValueError: neither `log_dir` nor `run` is given. (A run without a
            directory, as on a non-chief worker of a multi-worker training,
            writes nothing.)

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[SummaryReport("runs/a", config={"nphotons": 1e9})])
    """

    def __init__(self, log_dir=None, scenario=None, config=None, title="Intensity Bias Summary", run=None,
                 spec_prefix=None, figures=None):
        if log_dir is None and run is None:
            raise ValueError("SummaryReport needs a log_dir to write record.json and report.md into")
        super().__init__(run=run, log_dir=log_dir)
        self.scenario = scenario
        self.config = dict(config or {})
        self.title = title
        self.spec_prefix = spec_prefix
        self.figures = run_figures.wanted(figures)
        self._saved_at = -math.inf
        self._save_seconds = 0.0

    @property
    def record_path(self):
        return record_path(self.log_dir)

    @property
    def report_path(self):
        return report_path(self.log_dir)

    def set_model(self, model):
        super().set_model(model)
        if self.scenario is not None:
            self.record.scenario = self.scenario
        self.record.config.update(self.config)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.run.at_close(self._close)
        optimizer = getattr(self.model, "optimizer", None)
        note_training_setup(self.record, optimizer, current_learning_rate(optimizer))
        self._save_record()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        history = self.record.history
        entries = self.numbers(logs)
        if "lr" not in entries and "learning_rate" not in entries:
            entries["lr"] = current_learning_rate(self.model.optimizer)
        for name, value in entries.items():
            history.setdefault(name, []).append(math.nan if value is None else value)
        if monotonic() - self._saved_at >= self._save_seconds / RECORD_TIME_SHARE:
            self._save_record()

    def _save_record(self):
        if self.log_dir is not None and not self.run.lost(RECORD_FILE):  # no log_dir: a non-chief worker
            start = monotonic()
            with self.run.writing(RECORD_FILE, self.record_path):
                self.record.save(self.record_path)
            self._saved_at = monotonic()
            self._save_seconds = self._saved_at - start

    def on_fit_exception(self, error):
        """Closes the run that `error` ended: "interrupted" for Ctrl-C, "failed" otherwise.

        A run the NaN guard stopped by raising keeps "stopped_nan". A fit
        that died before this callback's `on_train_begin` (another callback
        refused its input there) still gets its record and report.
        """
        if not self.run.has_member(self):
            self.on_train_begin()
        if self.record.status == "running":
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            step = optimizer_step(self.model)
            self.record.add_finding(
                "warning", f"training_{status}",
                f"Training was {status} in epoch {self.epoch} (index from 0) with {step} optimizer steps done "
                f"(`optimizer.iterations`) by "
                f"{type(error).__name__}: {error}".rstrip(": ") + "; the record holds everything up to there.",
                step=step)
            self.record.status = status
        super().on_fit_exception(error)

    def _close(self):
        """The run's last act (`Run.at_close`): the record, the report and these in TensorBoard; the figures
        are drawn off the training thread (`Run.defer`), and the report is written again to link them."""
        self._save_record()
        if self.log_dir is None:
            return
        step = self.global_step
        write_hparams(self.run, step)
        if self.figures and run_figures.missing_matplotlib() is None:
            self._write_report([], step, in_tensorboard=False)  # the report is there even if the process dies
            self.run.defer(lambda: self._write_report_with_figures(step))
        else:
            self._write_report(self._draw_figures(), step)

    def _write_report(self, drawn, step, in_tensorboard=True):
        """Writes report.md linking the `drawn` figures and, `in_tensorboard`, shows it and them there."""
        report = render_report([self.record], title=self.title, spec_prefix=self.spec_prefix)
        with self.run.writing(REPORT_FILE, self.report_path):
            atomic_write_text(self.report_path, report + run_figures.figures_text(drawn, self.log_dir))
        if not in_tensorboard:
            return
        import tensorflow as tf

        with self.run.summaries("train", step=step) as writer:
            if writer is not None:
                tf.summary.text("report/summary", report + run_figures.figures_text(drawn, None))
                for figure in drawn:
                    if figure.path:
                        with open(figure.path, "rb") as handle:
                            image = tf.io.decode_png(handle.read(), channels=3)
                        tf.summary.image(f"{FIGURES_FOLDER}/{os.path.splitext(figure.name)[0]}", image[None],
                                         description=figure.title)

    def _write_report_with_figures(self, step):
        findings = len(self.record.findings)
        drawn = self._draw_figures()
        if len(self.record.findings) > findings:  # a figure failed: the record says so too
            self._save_record()
        self._write_report(drawn, step)

    def _draw_figures(self):
        """The run's figures (`figures.write_run_figures`), [] when switched off; a failure costs a warning."""
        if not self.figures:
            return []
        directory = figures_dir(self.log_dir)
        arrays = self.run.arrays
        try:
            with self.run.writing("figures", directory):
                return run_figures.write_run_figures(
                    self.record, directory, prediction=arrays.get("prediction"), truth=arrays.get("truth"),
                    step=arrays.get("prediction_step"))
        except Exception as error:  # noqa: BLE001 - a figure never costs the training
            message = (f"could not draw the figures into {directory} ({type(error).__name__}: "
                       f"{' '.join(str(error).split())[:300]}); the report is complete without them")
            warnings.warn(f"ptycho_callbacks: {message}", RuntimeWarning, stacklevel=2)
            self.record.add_finding("warning", "figures_failed", message[0].upper() + message[1:] + ".")
        return []
