"""LossComponents: the total loss split into its weighted components, per batch and per epoch."""

import re

import numpy as np

from ..stats import movement_share_rows, split_total_rows
from .base import RecordingCallback
from .loss_discovery import TOTAL
from .scalar_rows import write_scalars


class LossComponents(RecordingCallback):
    """Logs each loss component, its weighted value and its share of the loss's movement.

    Keras hands batch hooks running means over the epoch; this callback logs
    the value of each loss for the batch itself (read from Keras's own loss
    trackers), weighted by the compiled loss weights, each component's
    change since the fit's first logged batch, its share of the loss's
    movement and the residual the components do not explain
    (regularization). Per epoch it logs the epoch values, validation too.

    The share of the loss's movement of component i at step t is
    `|w_i (L_i(t) - L_i(t0))| / sum_j |w_j (L_j(t) - L_j(t0))|`, t0 the
    fit's first logged batch whose weighted components are all finite
    (`stats.movement_shares`): a constant a loss drops (PtychoPINN's Poisson
    NLL drops one, making the total about -3.7e6) cancels, and no share is
    negative. It is left out where undefined (at t0, or when no component
    moved). Per batch, the data differ from batch to batch, so a component's
    change also holds the change of the data (and of a data-dependent term a
    loss drops); the report's shares compare epochs over the same data.

    The batch hook only notes the trackers' state (read once, unless a
    `NaNGuard` noted it from its step's verdict); the batches' values,
    their TensorBoard points and the record's batch history are computed
    for blocks of batches (`Run.take_batches`): at epoch ends, every 64
    batches or 10 seconds, and when the run closes.

    TensorBoard tags (run `ptycho/train`, and `ptycho/validation` for epochs):
    `loss/batch/<name>` (value), `loss/batch_weighted/<name>` (weight x
    value), `loss/batch_change/<name>` (value - value at t0, unweighted),
    `loss/batch_movement_share/<name>`, `loss/batch/residual` at the global
    step; `loss/epoch/<name>` at the number of epochs completed. Custom
    Scalars gets one chart per component (each on its own axis: values six
    orders of magnitude apart never share one) and one chart of the shares.

    Args:
        loss_weights: {component name: weight}; discovered from the compiled
            model when None.
        update_freq: log batch values every this many batches; "epoch" for
            epoch values only.
        batch_history_limit: most batch entries kept in the run record (the
            oldest are dropped; TensorBoard keeps them all).
        run: the `Run` to feed (shared by `default_callbacks`); None makes one.
        log_dir: run directory when `run` is None; None writes no logs.

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[LossComponents(log_dir="runs/a")])
    """

    def __init__(self, loss_weights=None, update_freq=1, batch_history_limit=10000, run=None, log_dir=None):
        super().__init__(run=run, log_dir=log_dir)
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq must be 'epoch' or a positive integer, got {update_freq!r}")
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.update_freq = update_freq
        self.batch_history_limit = int(batch_history_limit)
        self._first = None  # the values of the fit's first logged batch (t0 of the movement)

    def set_model(self, model):
        super().set_model(model)
        if self.loss_weights is not None:
            self.run.use_loss_weights(self.loss_weights)
        names = [TOTAL, *self.run.loss_weights]
        self.run.add_charts("loss components", [
            ("share of the loss's movement per batch: |w·(L − L at the first batch)| / Σ over components",
             r"loss/batch_movement_share/.*"),
            *((f"{name} per batch", rf"loss/batch/{re.escape(name)}$") for name in names),
            ("residual per batch (total − Σ weight·value)", r"loss/batch/residual$"),
        ])
        self.run.add_charts("loss components per epoch", [
            (f"{name} per epoch", rf"loss/epoch/{re.escape(name)}$") for name in names])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first = None
        if self.update_freq != "epoch":
            self.run.add_batch_writer(self, self._batch_columns)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.update_freq == "epoch" or self.global_step % self.update_freq:
            return
        if not self.run.batches.has_state(self.global_step):  # no NaN guard before this callback noted it
            self.run.note_batch(self.global_step, state=self.run.trackers().read_state())

    def _batch_columns(self, block):
        """The record's batch history and the TensorBoard columns of a `Block` of batches (every `update_freq`)."""
        kept = block.steps % self.update_freq == 0
        values = {name: np.ma.masked_where(~kept, column) for name, column in block.values.items()}
        self._remember_batches(block.steps[kept], {name: column[kept] for name, column in values.items()})
        if self.log_dir is None or not values:
            return {}
        weights = self.run.loss_weights
        weighted, residual = split_total_rows(values, weights, TOTAL)
        columns = {f"loss/batch/{name}": value for name, value in values.items()}
        columns.update((f"loss/batch_weighted/{name}", value) for name, value in weighted.items())
        since = self._first_finite(values, weights, kept)
        if self._first is not None:
            before = np.arange(len(block)) < since
            for name, value in values.items():
                if name in self._first:
                    columns[f"loss/batch_change/{name}"] = np.ma.masked_where(before, value - self._first[name])
            shares = movement_share_rows(self._first, values, weights)
            columns.update((f"loss/batch_movement_share/{name}", np.ma.masked_where(before, share))
                           for name, share in shares.items())
        columns["loss/batch/residual"] = residual
        return columns

    def _first_finite(self, values, weights, kept):
        """Sets t0 of the movement (`_first`) at the block's first kept batch whose weighted components are all
        finite, if not set before; returns the index in the block from which it holds (len(kept): nowhere)."""
        if self._first is not None:
            return 0
        finite = kept.copy()
        for name, weight in weights.items():
            if weight == 0:
                continue
            column = values.get(name)
            if column is None:
                return len(kept)
            finite &= ~np.ma.getmaskarray(column) & np.isfinite(np.ma.getdata(column))
        if not finite.any():
            return len(kept)
        index = int(np.argmax(finite))
        self._first = {name: float(value[index]) for name, value in values.items()
                       if not np.ma.getmaskarray(value)[index]}
        return index

    def _remember_batches(self, steps, values):
        record = self.record
        record.batch_steps.extend(steps.tolist())
        for name, column in values.items():
            record.batch_history.setdefault(name, []).extend(np.ma.getdata(column)[~np.ma.getmaskarray(column)].tolist())
        overflow = len(record.batch_steps) - self.batch_history_limit
        if overflow > 0:
            del record.batch_steps[:overflow]
            for series in record.batch_history.values():
                del series[:overflow]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.log_dir is None or not logs:
            return
        weights = self.run.loss_weights
        logs = self.numbers(logs)
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        for run, values in (("train", train), ("validation", validation)):
            if not values:
                continue
            with self.run.summaries(run) as writer:
                if writer is not None:  # at the epochs completed, as for all epoch series
                    write_scalars(writer, epoch + 1, {f"loss/epoch/{name}": value for name, value in values.items()
                                                      if name == TOTAL or name in weights})
