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


def scalars(log_dir, run="train"):
    """{tag: [(step, value), ...]} of every scalar written as a tensor summary."""
    accumulator = load(log_dir, run)
    series = {}
    for tag in accumulator.Tags()["tensors"]:
        events = accumulator.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if all(v.shape == () and v.dtype.kind == "f" for v in values):
            series[tag] = [(e.step, float(v)) for e, v in zip(events, values)]
    return series


def texts(log_dir, run="train"):
    """{tag: [(step, text), ...]} of every text summary."""
    accumulator = load(log_dir, run)
    found = {}
    for tag in accumulator.Tags()["tensors"]:
        events = accumulator.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if values and values[0].dtype.kind in "OSU":
            found[tag] = [(e.step, v.item().decode() if isinstance(v.item(), bytes) else str(v.item()))
                          for e, v in zip(events, values)]
    return found
