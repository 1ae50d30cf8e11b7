"""SummaryReport: the run record and the Markdown report, written as training goes."""

import math
import os
from time import monotonic

from ..record import atomic_write_text, utc_now_iso
from ..render import render_report
from . import loss_discovery
from .base import RecordingCallback, optimizer_step
from .batch_values import variable_value

RECORD_FILE = "record.json"
REPORT_FILE = "report.md"

RECORD_TIME_SHARE = 0.02
"""Most share of the training's time spent rewriting record.json at epoch ends. The record grows
(the per-batch values, thousands of epochs) and its rewrite with it: rewritten after every epoch,
the epoch end took 7 ms at the start and 73 ms at the end of 400 epochs of 10 steps of the N=16
stand-in (`benchmarks/hooks.py`). Past that share it is rewritten less often than every epoch."""


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
    written as the fit ends. At the end of training the report (every
    section of the intensity-bias summary, for this run) is written next to
    it and shown in TensorBoard's Text tab under `report/summary`.

    Args:
        log_dir: the run directory (required).
        scenario: the run's name in the report; the directory's name if None.
        config: run configuration for the report (`nphotons`, `N`,
            `gridsize`, `intensity_scale`, `intensity_scale_trainable`,
            `normalize_gain`, `e_batch_intensity`, ...), merged into the record.
        title: the report's title.
        record: the `RunRecord` to fill (shared by `default_callbacks`).

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[SummaryReport("runs/a", config={"nphotons": 1e9})])
    """

    def __init__(self, log_dir, scenario=None, config=None, title="Intensity Bias Summary", record=None):
        if log_dir is None:
            raise ValueError("SummaryReport needs a log_dir to write record.json and report.md into")
        super().__init__(log_dir=log_dir, record=record)
        if scenario is not None:
            self.record.scenario = scenario
        self.record.base_dir = self.record.base_dir or os.path.abspath(log_dir)
        self.record.config.update(config or {})
        self.title = title
        self._saved_at = -math.inf
        self._save_seconds = 0.0

    @property
    def record_path(self):
        return os.path.join(self.log_dir, RECORD_FILE)

    @property
    def report_path(self):
        return os.path.join(self.log_dir, REPORT_FILE)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.writer()  # held to the end, so the report lands in the event file the other callbacks wrote
        self.record.status = "running"
        self.record.config.setdefault("loss_weights", loss_discovery.compiled_loss_weights(self.model))
        self._save_record()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        history = self.record.history
        entries = dict(logs or {})
        if "lr" not in entries and "learning_rate" not in entries:
            entries["lr"] = current_learning_rate(self.model.optimizer)
        for name, value in entries.items():
            history.setdefault(name, []).append(math.nan if value is None else float(value))
        if monotonic() - self._saved_at >= self._save_seconds / RECORD_TIME_SHARE:
            self._save_record()

    def _save_record(self):
        if self.log_dir is not None:  # None on a non-chief worker: the chief writes the run
            start = monotonic()
            self.record.save(self.record_path)
            self._saved_at = monotonic()
            self._save_seconds = self._saved_at - start

    def finish(self, status=None):
        """Closes the record with `status` (or what the run says) and writes record and report.

        Called at train end; also usable on an exception path to leave a
        complete record of an interrupted run.
        """
        record = self.record
        if status is not None:
            record.status = status
        elif record.status == "running":
            record.status = "completed"
        record.ended_at = utc_now_iso()
        self._save_record()
        report = render_report([record], title=self.title)
        if self.log_dir is not None:
            atomic_write_text(self.report_path, report)
        return report

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._close()

    def on_fit_exception(self, error):
        """Closes the run that `error` ended: "interrupted" for Ctrl-C, "failed" otherwise.

        A run the NaN guard stopped by raising keeps "stopped_nan".
        """
        if self.record.status == "running":
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self.record.add_finding(
                "warning", f"training_{status}",
                f"Training was {status} at epoch {self.epoch}, step {optimizer_step(self.model)} by "
                f"{type(error).__name__}: {error}".rstrip(": ") + "; the record holds everything up to there.")
            self.record.status = status
        self._close()

    def _close(self):
        report = self.finish()
        writer = self.writer()
        if writer is not None:
            import tensorflow as tf

            with writer.as_default(step=self.global_step):
                tf.summary.text("report/summary", report)
        self.release_writers()

    def get_config(self):
        config = super().get_config()
        config.update(scenario=self.record.scenario, title=self.title)
        return config
