"""Reads back what our callbacks wrote, with TensorBoard's own reader."""

import os

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


def load(log_dir, run="train"):
    path = os.path.join(log_dir, "ptycho", run)
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={
        event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0,
        event_accumulator.HISTOGRAMS: 0, event_accumulator.IMAGES: 0})
    accumulator.Reload()
    return accumulator


def _tensor_series(log_dir, run, plugin=None):
    """Yields (tag, [(step, ndarray), ...]) for every tensor summary (TF2 writes scalars, text and images
    so), or for those of one plugin."""
    accumulator = load(log_dir, run)
    for tag in accumulator.Tags()["tensors"]:
        if plugin is None or accumulator.SummaryMetadata(tag).plugin_data.plugin_name == plugin:
            yield tag, [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]


def scalars(log_dir, run="train"):
    """{tag: [(step, value), ...]} of every scalar summary."""
    return {tag: [(step, float(v)) for step, v in series]
            for tag, series in _tensor_series(log_dir, run)
            if all(v.shape == () and v.dtype.kind == "f" for _, v in series)}


def texts(log_dir, run="train"):
    """{tag: [(step, text), ...]} of every text summary."""
    def as_text(value):
        item = value.item()
        return item.decode() if isinstance(item, bytes) else str(item)

    return {tag: [(step, as_text(v)) for step, v in series]
            for tag, series in _tensor_series(log_dir, run, plugin="text")}
