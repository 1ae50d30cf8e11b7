"""LossComponents: the total loss split into its weighted components, per batch and per epoch."""

from ..stats import split_total
from .base import RecordingCallback, summary_value
from .loss_discovery import TOTAL


class LossComponents(RecordingCallback):
    """Logs each loss component, its weighted contribution and its share of the total.

    Keras hands batch hooks running means over the epoch; this callback logs
    the value of each loss for the batch itself (read from Keras's own loss
    trackers), weighted by the compiled loss weights, with each component's
    share of the total and the residual the components do not explain
    (regularization). Per epoch it logs the epoch values, validation too. In
    TensorBoard the components share one chart (Custom Scalars) and also have
    one chart each.

    TensorBoard tags (run `ptycho/train`, and `ptycho/validation` for epochs):
    `loss/batch/<name>`, `loss/batch_weighted/<name>`, `loss/batch_share/<name>`,
    `loss/batch/residual` at the global step; `loss/epoch/<name>` at the
    number of epochs completed.

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

    def set_model(self, model):
        super().set_model(model)
        if self.loss_weights is not None:
            self.run.use_loss_weights(self.loss_weights)
        self.run.add_charts("loss components", [
            ("loss per batch (each component and the total)", r"loss/batch/.*"),
            ("weighted contribution per batch", r"loss/batch_weighted/.*"),
            ("share of the total per batch", r"loss/batch_share/.*"),
            ("loss per epoch", r"loss/epoch/.*"),
        ])

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.update_freq == "epoch" or self.global_step % self.update_freq:
            return
        values = self.run.trackers().read(step=self.global_step)
        weighted, shares, residual = split_total(values, self.run.loss_weights, TOTAL)
        self._remember_batch(values)
        if self.log_dir is not None:
            self._write_batch(values, weighted, shares, residual)

    def _remember_batch(self, values):
        record = self.record
        record.batch_steps.append(self.global_step)
        for name, value in values.items():
            record.batch_history.setdefault(name, []).append(value)
        overflow = len(record.batch_steps) - self.batch_history_limit
        if overflow > 0:
            del record.batch_steps[:overflow]
            for series in record.batch_history.values():
                del series[:overflow]

    def _write_batch(self, values, weighted, shares, residual):
        scalars = {f"loss/batch/{name}": value for name, value in values.items()}
        scalars.update((f"loss/batch_weighted/{name}", value) for name, value in weighted.items())
        scalars.update((f"loss/batch_share/{name}", value) for name, value in shares.items())
        if residual is not None:
            scalars["loss/batch/residual"] = residual
        self.write_batch_scalars(scalars)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.log_dir is None or not logs:
            return
        import tensorflow as tf

        weights = self.run.loss_weights
        logs = self.numbers(logs)
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        for run, values in (("train", train), ("validation", validation)):
            if not values:
                continue
            with self.run.summaries(run, step=epoch + 1) as writer:  # epochs completed, as for all epoch series
                for name, value in values.items():
                    if writer is not None and (name == TOTAL or name in weights):
                        tf.summary.scalar(f"loss/epoch/{name}", summary_value(value))
