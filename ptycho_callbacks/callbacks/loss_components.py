"""LossComponents: the total loss split into its weighted components, per batch and per epoch."""

import math

from . import loss_discovery
from .base import RecordingCallback, summary_value
from .batch_values import BatchValues

LAYOUT_CATEGORY = "ptycho-callbacks"


def _finite(value):
    return value is not None and math.isfinite(value)


def split_total(values, weights, total_key=loss_discovery.TOTAL):
    """Weighted contributions, shares of the total and the residual for one set of values.

    Args:
        values: {name: value} holding the total and the components.
        weights: {component name: loss weight}.

    Returns:
        (weighted, shares, residual): weighted[name] = weight * value;
        shares[name] = weighted / total; residual = total - sum(weighted),
        i.e. what the components do not explain (regularization losses).
        Shares and residual are None where undefined.
    """
    total = values.get(total_key)
    weighted = {name: weights[name] * values[name] for name in weights if name in values}
    shares, residual = {}, None
    if _finite(total):
        if weighted and all(_finite(v) for v in weighted.values()):
            residual = total - sum(weighted.values())
        if total != 0:
            shares = {name: value / total for name, value in weighted.items() if _finite(value)}
    return weighted, shares, residual


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
        log_dir: run directory for TensorBoard logs; None writes no logs.
        record: the `RunRecord` to fill (shared by `default_callbacks`).

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[LossComponents(log_dir="runs/a")])
    """

    def __init__(self, loss_weights=None, update_freq=1, batch_history_limit=10000,
                 log_dir=None, record=None):
        super().__init__(log_dir=log_dir, record=record)
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq must be 'epoch' or a positive integer, got {update_freq!r}")
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.update_freq = update_freq
        self.batch_history_limit = int(batch_history_limit)
        self._batch_values = None
        self._weights = {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._weights = (dict(self.loss_weights) if self.loss_weights is not None
                         else loss_discovery.compiled_loss_weights(self.model))
        self.record.config.setdefault("loss_weights", dict(self._weights))
        self._batch_values = None
        if self.log_dir is not None:
            self._write_layout()

    def _write_layout(self):
        import tensorflow as tf
        from tensorboard.plugins.custom_scalar import layout_pb2
        from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

        def chart(title, regex):
            return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))

        layout = layout_pb2.Layout(category=[layout_pb2.Category(title=f"{LAYOUT_CATEGORY}: loss components", chart=[
            chart("loss per batch (each component and the total)", r"loss/batch/.*"),
            chart("weighted contribution per batch", r"loss/batch_weighted/.*"),
            chart("share of the total per batch", r"loss/batch_share/.*"),
            chart("loss per epoch", r"loss/epoch/.*"),
        ]), layout_pb2.Category(title=f"{LAYOUT_CATEGORY}: intensity scale", chart=[
            chart("log_scale per batch", r"scale/batch/log_scale"),
            chart("exp(log_scale) per batch", r"scale/batch/exp_log_scale"),
            chart("exp(log_scale) and configured scale per epoch", r"scale/epoch/(exp_log_scale|configured_scale)"),
        ])])
        with self.writer().as_default():
            tf.summary.experimental.write_raw_pb(
                custom_scalar_summary.pb(layout).SerializeToString(), step=0)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        BatchValues.reset_shared(self.model)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.update_freq == "epoch" or self.global_step % self.update_freq:
            return
        if self._batch_values is None:
            self._batch_values = BatchValues.shared(self.model)
        values = self._batch_values.read(step=self.global_step)
        weighted, shares, residual = split_total(values, self._weights)
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

        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        for run, values in (("train", train), ("validation", validation)):
            if not values:
                continue
            with self.writer(run).as_default(step=epoch + 1):  # epochs completed, as for all epoch series
                for name, value in values.items():
                    if name == loss_discovery.TOTAL or name in self._weights:
                        tf.summary.scalar(f"loss/epoch/{name}", summary_value(value))

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self.release_writers()

    def get_config(self):
        config = super().get_config()
        config.update(loss_weights=self.loss_weights, update_freq=self.update_freq,
                      batch_history_limit=self.batch_history_limit)
        return config
