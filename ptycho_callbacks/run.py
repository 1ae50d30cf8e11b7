"""Run: the one owner of what our callbacks share while a model trains.

A training watched by our callbacks has one `Run`: the `RunRecord` they fill,
the TensorBoard writers of the run directory, the one reader of Keras's loss
trackers, the discovered `log_scale` variable, the loss weights and the NaN
guard installed in the train step. Callbacks never talk to one another; they
talk to the run, through its methods.

Its life follows Keras's hooks, so that the order of the callbacks in the list
never matters:
- `attach` (from each callback's `set_model`, which Keras calls for every
  callback before any `on_train_begin`): the callback joins and declares what
  it knows (a given `log_scale` variable, loss weights, Custom Scalars charts);
- `begin` (from `on_train_begin`): the first member to begin opens the run;
- `end` (from `on_train_end`, or `on_fit_exception` when `fit` raised): when
  the last member ends, the run closes: the closers run (the report), the
  per-batch scalars are written, the writers closed.

A fit left by an exception that nothing told us about (raised by another
callback's hook when `fit` is not wrapped by `finish_on_exception`) leaves
its run open; the run is closed, with what is known of the cause, when the
next fit of the model attaches a callback or, at the latest, when the
process exits.

A run's record, writers, tracker reader, `log_scale`, loss weights, step
guard and probe sub-model (`LayerProbe`) are its own; no module keeps any.

Callbacks built without a run and with the same model and `log_dir` (or
both without one) share one run: it is kept on the model for the fit, not in
a module-level registry.

Example:

```python
run = Run("runs/gs2", scenario="gs2_base", config={"nphotons": 1e9})
model.fit(x, y, callbacks=[NaNGuard(run=run), LossComponents(run=run), SummaryReport(run=run)])
run.record.status   # "completed"
```
"""

import atexit
import contextlib
import json
import math
import os
import re
import sys
import warnings

import tensorflow as tf

from .background import BACKGROUND
from .batch_log import BatchLog, row_groups
from .callbacks.batch_values import BatchValues
from .callbacks.fit_exceptions import tell_fit_exception
from .callbacks.loss_discovery import compiled_loss_weights
from .callbacks.probe_inputs import LayerProbe
from .callbacks.scalar_rows import write_rows
from .callbacks.scale_discovery import ScaleVariable, find_log_scale
from .record import RunRecord, utc_now_iso
from .run_dir import check_writable_dir, tensorboard_dir

_ON_MODEL = "_ptycho_callbacks_runs"
"""Attribute of a model holding {log_dir: Run} of the callbacks built without a run, for one fit."""

_OPEN_ON_MODEL = "_ptycho_callbacks_open_runs"
"""Attribute of a model holding the runs that have begun a fit of it and not closed yet."""

CUSTOM_SCALARS_CATEGORY = "ptycho-callbacks"
"""Prefix of our Custom Scalars categories."""

TENSORBOARD_DATA = "TensorBoard data"
"""What `Run.writing` calls the event files when writing them fails."""


def is_chief():
    """True unless this process is a non-chief task of a multi-worker training.

    Multi-worker strategies describe the cluster in `TF_CONFIG`; the chief is
    the task of type "chief", or worker 0 when the cluster has no chief (the
    rule Keras's own callbacks follow). Only the chief writes.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    kind = task.get("type")
    if not kind or kind == "chief":
        return True
    return kind == "worker" and int(task.get("index", 0)) == 0 and "chief" not in (config.get("cluster") or {})


def _os_reason(error):
    """What went wrong, in a line: an OSError's text, or the OS error TensorFlow wraps in its op's traceback."""
    text = str(getattr(error, "message", None) or error)
    found = re.search(r"(/[^\s;]+); ([^\n]+)", text)  # TensorFlow's "<file>; No space left on device"
    line = f"{found.group(2)}: {found.group(1)}" if found else text.strip().splitlines()[0] if text.strip() else ""
    return " ".join(line.split())[:300]


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class FitEndedUnseen(RuntimeError):
    """Stands for the unknown exception that left a fit without telling our callbacks."""


class Run:
    """What our callbacks share during the trainings of one run directory.

    Args:
        log_dir: the run directory (TensorBoard logs, `record.json`,
            `report.md`); None writes nothing (nor does a non-chief worker of
            a multi-worker training, whose chief writes the run).
        scenario: the run's name in the report; the directory's name if None.
        config: the run's configuration for the report (see `RunRecord.config`).

    Raises:
        OSError: `log_dir` cannot be written.
    """

    def __init__(self, log_dir=None, scenario=None, config=None):
        if log_dir is not None and is_chief():
            log_dir = os.fspath(log_dir)
            check_writable_dir(log_dir)
        else:
            log_dir = None
        self.log_dir = log_dir
        name = scenario or (os.path.basename(os.path.normpath(log_dir)) if log_dir else "run")
        self.record = RunRecord(scenario=name, base_dir=os.path.abspath(log_dir) if log_dir else None,
                                config=dict(config or {}))
        self.model = None
        self.step_guard = None
        """The NaN guard armed inside the train step for this fit (`NaNGuard` sets it), or None."""
        self.probe = LayerProbe()
        """Layer outputs on a probe batch, one sub-model and one forward pass per step for all callbacks."""
        self._members = []
        self._closers = []
        self._deferred = []
        self._writers = {}
        self._batches = BatchLog()
        self._batch_writers = {}
        self._trackers = None
        self._given_log_scale = None
        self._scale = None
        self._given_loss_weights = None
        self._loss_weights = None
        self._charts = {}
        self._lost = {}  # what could not be written (TensorBoard, record.json, report.md): the error
        self.aborted_by = None
        """The exception that ended the last fit from inside a train step (`abort`), or None."""
        self.arrays = {}
        """What callbacks keep for the run's close, never saved in the record: the probe batch's latest
        `prediction`, its `truth` and the step of that evaluation (`StageStatistics`), for the figures."""

    # ------------------------------------------------------------ life cycle

    @classmethod
    def shared(cls, model, run):
        """The run that callbacks built without one share on `model` for `run.log_dir`: `run` if none yet."""
        runs = vars(model).get(_ON_MODEL)
        if runs is None:
            runs = {}
            # object.__setattr__ keeps it out of Keras's attribute tracking (and of saved models).
            object.__setattr__(model, _ON_MODEL, runs)
        return runs.setdefault(run.log_dir, run)

    def attach(self, model):
        """From a callback's `set_model`: the run watches `model` in its next fit.

        Keras attaches every callback of a fit before any begins, so a run
        of this model still open here belongs to an earlier fit that was left
        by an exception nobody told us about: it is closed first. Work that
        an earlier close of this run directory deferred (`defer`) is waited
        for first, so that nothing of this fit overlaps it.
        """
        self.wait()
        for stale in list(vars(model).get(_OPEN_ON_MODEL, ())):
            stale.abort(FitEndedUnseen("fit ended by an exception our callbacks were not told about (raised "
                                       "outside the train step, e.g. by another callback); noticed when the "
                                       "model's next fit began"))
        self.model = model

    def begin(self, callback):
        """`callback` begins a fit (or an evaluation outside fit); the first to begin opens the run."""
        if not self._members:
            self._open()
        if callback not in self._members:
            self._members.append(callback)

    def end(self, callback):
        """`callback` is done with this fit; the last one to end closes the run."""
        if callback in self._members:
            self._members.remove(callback)
            if not self._members:
                self._close()

    def abort(self, error):
        """`fit` is being left by `error`, raised inside a train step: every member ends as if told so.

        Keras calls no callback then; `finish_on_exception` tells ours when it
        wraps `fit`, and skips those already told here.
        """
        self.aborted_by = error
        tell_fit_exception(list(self._members), error)

    def has_member(self, callback):
        """True while `callback` has begun this fit and not ended it."""
        return callback in self._members

    @property
    def is_open(self):
        return bool(self._members)

    def at_close(self, closer):
        """Calls `closer()` when this fit's run closes, after every member ended (e.g. to write the report)."""
        self._closers.append(closer)

    def defer(self, work):
        """From a closer: `work()` runs off the training thread once the run closed, the run's TensorBoard
        writers still open for it (e.g. to draw the figures); `wait` waits for it, and so do the next fit
        of this run directory (`attach`) and the process's exit."""
        self._deferred.append(work)

    def wait(self, timeout=None):
        """Waits until the work deferred by the closes of this run directory is done (at most `timeout`
        seconds); True when it is. Call it before reading what that work writes (the figures)."""
        return BACKGROUND.wait(self._work_key, timeout)

    @property
    def _work_key(self):
        """What names this run's deferred work: its directory, shared by every run that writes there."""
        return self.log_dir if self.log_dir is not None else self

    def _open(self):
        if self.model is not None:
            open_runs = vars(self.model).get(_OPEN_ON_MODEL)
            if open_runs is None:
                open_runs = []
                object.__setattr__(self.model, _OPEN_ON_MODEL, open_runs)
            open_runs.append(self)
        atexit.register(self._close_at_exit)
        self.aborted_by = None
        self._trackers = None
        self._scale = None
        self._loss_weights = None
        self._batches = BatchLog()
        self._batch_writers = {}
        self.step_guard = None
        self.record.status = "running"
        self.record.ended_at = None
        self._settle_loss_weights()
        if self.log_dir is not None and self._charts:
            self._write_custom_scalars()

    def _settle_loss_weights(self):
        """The record's loss weights are those the losses are weighed with; a config that says otherwise is kept
        beside them and told (e.g. PtychoPINN's params.cfg changed after the model was compiled)."""
        used = dict(self.loss_weights)
        configured = self.record.config.get("loss_weights")
        if not used or not isinstance(configured, dict):
            self.record.config.setdefault("loss_weights", used)
            return
        differ = {name: (configured[name], weight) for name, weight in used.items()
                  if name in configured and _as_float(configured[name]) != float(weight)}
        if differ:
            self.record.config["configured_loss_weights"] = dict(configured)
            self.record.add_finding(
                "warning", "loss_weights_differ",
                "The config's loss weights differ from those the model weighs its losses with: "
                + ", ".join(f"{name} {given!r} in the config, {weight:g} in the model"
                            for name, (given, weight) in differ.items())
                + "; the record uses the model's.")
        self.record.config["loss_weights"] = {**configured, **used}

    def _close(self):
        closers, self._closers = self._closers, []
        self.take_batches()
        if self.record.status == "running":
            self.record.status = "completed"
        self.record.ended_at = utc_now_iso()
        # Findings of one step come in the order of the callbacks' hooks; by code they read the same in any order.
        self.record.findings.sort(key=lambda finding: (finding.get("step", math.inf), finding["code"]))
        try:
            for closer in closers:
                closer()
        finally:
            deferred, self._deferred = self._deferred, []
            if deferred:
                BACKGROUND.submit(lambda: self._finish(deferred), key=self._work_key)
            else:
                self._close_writers()
            atexit.unregister(self._close_at_exit)
            model_attributes = vars(self.model) if self.model is not None else {}
            if self in model_attributes.get(_OPEN_ON_MODEL, ()):
                model_attributes[_OPEN_ON_MODEL].remove(self)
            runs = model_attributes.get(_ON_MODEL)
            if runs is not None and runs.get(self.log_dir) is self:
                del runs[self.log_dir]

    def _finish(self, deferred):
        try:
            for work in deferred:
                work()
        finally:
            self._close_writers()

    def _close_writers(self):
        for writer in self._writers.values():
            with self.writing(TENSORBOARD_DATA, self.log_dir):
                writer.close()
        self._writers = {}

    def _close_at_exit(self):
        """The process exits with this run open: it closes with the exception that ended the program, if any."""
        error = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if not isinstance(error, BaseException):
            error = FitEndedUnseen("the process exited during fit, after an exception our callbacks were not "
                                   "told about")
        try:
            self.abort(error)
        except Exception as failure:  # noqa: BLE001 - nothing may fail at exit
            warnings.warn(f"ptycho_callbacks could not close the run {self.log_dir!r} at exit: {failure}",
                          RuntimeWarning, stacklevel=1)

    # ------------------------------------------------------------ what the model holds

    def use_log_scale(self, variable):
        """Declares the `log_scale` variable (a user's choice wins over discovery)."""
        self._given_log_scale = variable
        self._scale = None

    @property
    def log_scale(self):
        """The `ScaleVariable` of the model: found once per fit, or the declared one."""
        if self._scale is None:
            found = find_log_scale(self.model)
            if self._given_log_scale is not None:
                found = ScaleVariable(self._given_log_scale, "given by the user", found.scalers)
            self._scale = found
        return self._scale

    def use_loss_weights(self, weights):
        """Declares {component: weight} (a user's choice wins over the compiled weights)."""
        self._given_loss_weights = dict(weights)
        self._loss_weights = None

    @property
    def loss_weights(self):
        """{logged component name: weight}: the declared ones, else the model's compiled loss weights."""
        if self._loss_weights is None:
            given = self._given_loss_weights
            self._loss_weights = dict(given) if given is not None else compiled_loss_weights(self.model)
        return self._loss_weights

    def trackers(self):
        """The one reader of the model's loss trackers (`BatchValues`), made at its first use in each fit.

        Keras builds its trackers in the first step: ask from a batch hook on.
        """
        if self._trackers is None:
            self._trackers = BatchValues(self.model)
        return self._trackers

    def reset_trackers(self):
        """Keras resets its trackers at each epoch and evaluation start; so do the reader and the batch log.

        The batches noted before are taken first, against the state they were noted in.
        """
        self.take_batches()
        self._batches.reset()
        if self._trackers is not None:
            self._trackers.reset()

    # ------------------------------------------------------------ batches

    @property
    def batches(self):
        """The fit's `BatchLog`: what the batch hooks noted, and the last batch values taken out of it."""
        return self._batches

    def note_batch(self, step, state=None, log_scale=None):
        """From a batch hook: Keras's tracker state (`BatchValues.state()` on the host) and/or `log_scale`
        after the batch ending at optimizer step `step`; the notes are taken in blocks (`take_batches`), and
        written once 64 are noted or the oldest is 10 s old, so that TensorBoard stays live."""
        if self._batches.due(step):
            self.flush()
        self._batches.note(step, state, log_scale)

    def add_batch_writer(self, owner, columns):
        """`columns(block)` turns each `Block` of batches into TensorBoard columns {tag: masked array}
        (a masked entry is no point), for this fit; `owner` (a callback) has one writer at most."""
        self._batch_writers[owner] = columns

    def take_batches(self):
        """Turns the batches noted so far into each writer's columns, and those into TensorBoard rows, written now."""
        if not len(self._batches):
            return
        block = self._batches.take(self.trackers().names)
        columns = {}
        for columns_of in list(self._batch_writers.values()):
            columns.update(columns_of(block))
        groups = row_groups(block.steps, columns)
        writer = self.writer("train") if groups else None  # no event file for a block without a point
        if writer is None:
            return
        with self.writing(TENSORBOARD_DATA, self.log_dir):
            for steps, tags, values in groups:
                write_rows(writer, steps, tags, values)

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, what, path):
        """Runs the block that writes `what` to `path`; a failure to write costs a warning, never the training.

        A full disk, a permission lost or a path gone: the first failure of
        `what` (TensorBoard data, the record or the report file) prints one warning
        naming the path and the error, becomes a finding of the record, and
        `what` is not written again in this run (callers ask `lost`);
        training goes on.
        """
        try:
            yield
        except (OSError, tf.errors.OpError) as error:
            if what in self._lost:
                return
            reason = _os_reason(error)
            self._lost[what] = reason
            message = (f"could not write {what} to {path} ({type(error).__name__}: {reason}); nothing more of it "
                       "is written in this run, training goes on")
            warnings.warn(f"ptycho_callbacks: {message}", RuntimeWarning, stacklevel=3)
            self.record.add_finding("warning", "logging_failed", message[0].upper() + message[1:] + ".")

    def lost(self, what):
        """True once writing `what` failed in this run (see `writing`)."""
        return what in self._lost

    # ------------------------------------------------------------ TensorBoard

    def writer(self, name="train"):
        """The summary writer of TensorBoard run `name` ("train" or "validation").

        None without log_dir, and once writing TensorBoard data failed.
        """
        if self.log_dir is None or TENSORBOARD_DATA in self._lost:
            return None
        writer = self._writers.get(name)
        if writer is None:
            with self.writing(TENSORBOARD_DATA, self.log_dir):
                writer = self._writers[name] = tf.summary.create_file_writer(tensorboard_dir(self.log_dir, name))
        return writer

    @contextlib.contextmanager
    def summaries(self, name="train", step=None):
        """`with run.summaries("train", step) as writer:` the writer as default (None: write nothing).

        A failure to write inside the block is handled by `writing`.
        """
        writer = self.writer(name)
        if writer is None:
            yield None
            return
        with self.writing(TENSORBOARD_DATA, self.log_dir), writer.as_default(step=step):
            yield writer

    def flush(self):
        """Writes the noted batches and flushes every writer, keeping them open."""
        self.take_batches()
        if self.lost(TENSORBOARD_DATA):
            return
        with self.writing(TENSORBOARD_DATA, self.log_dir):
            for writer in self._writers.values():
                writer.flush()

    def add_charts(self, category, charts):
        """Declares Custom Scalars charts [(title, tag regex)] under `ptycho-callbacks: <category>`."""
        self._charts[category] = list(charts)

    def _write_custom_scalars(self):
        from tensorboard.plugins.custom_scalar import layout_pb2
        from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

        categories = [layout_pb2.Category(title=f"{CUSTOM_SCALARS_CATEGORY}: {category}", chart=[
            layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for title, regex in charts]) for category, charts in sorted(self._charts.items())]
        with self.summaries("train") as writer:
            if writer is not None:
                tf.summary.experimental.write_raw_pb(
                    custom_scalar_summary.pb(layout_pb2.Layout(category=categories)).SerializeToString(), step=0)
