"""Soak test: 300 short epochs with every callback of `default_callbacks` on.

Host memory (VmRSS) and open file descriptors must level off after a
warm-up, and the event files must read back, after all those epochs, with one
point per epoch.

The training runs in a process of its own (this file run as a script): in
the test process, after a few hundred other tests, glibc's heap is so
fragmented that its RSS moved by several MB from one CI run to the next,
whatever the callbacks did.
"""

import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.util import tensor_util

from ptycho_callbacks.record import RunRecord

import tensorboard_events
from small_data import simulate_small_data

pytestmark = pytest.mark.slow

EPOCHS = 300
WARMUP = 50
"""Epochs after which TensorFlow's caches, the writers and the tracing are in place."""
WINDOW = 25
"""Epochs whose median RSS is a level: single samples catch transient buffers (an epoch's summaries)."""
RSS_GROWTH_LIMIT_MB = 4.0
"""Allowed rise of the RSS level from just after the warm-up to the last epochs (225 epochs apart).
Measured: 0.7 to 1.3 MB under either Keras (the per-epoch history, and LossComponents' per-batch
values). A callback keeping 32 kB per epoch, the size of one probe batch (4x16x16x4 complex64),
made it 7.1 to 8.1 MB (`python tests/test_soak.py RUN_DIR 32`). StageStatistics writing its ~50
summary values per epoch as Python floats, which TensorFlow keeps as eager constants, was a leak
of that size (7 to 9 MB by this test's earlier single-sample measure)."""
SAMPLES = 4


def rss_mb():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def level_rise(rss):
    """MB between the RSS level just after the warm-up and at the end (medians of WINDOW epochs)."""
    return statistics.median(rss[-WINDOW:]) - statistics.median(rss[WARMUP:WARMUP + WINDOW])


def train(run, keep_kb_per_epoch=0):
    """Trains with the whole suite into `run`; writes RSS and open files per epoch to `run/resources.json`.

    `keep_kb_per_epoch` adds a callback that keeps that much memory each
    epoch: a leak of known size, to see the test fail.
    """
    import tensorflow as tf

    from ptycho_callbacks import Probe, default_callbacks
    from ptycho_callbacks._keras import keras
    from ptycho_callbacks.sim.model import build_model

    class ResourceSampler(keras.callbacks.Callback):
        """RSS (MB) and number of open file descriptors at the end of every epoch."""

        def __init__(self):
            super().__init__()
            self.rss, self.fds = [], []

        def on_epoch_end(self, epoch, logs=None):
            self.rss.append(rss_mb())
            self.fds.append(open_fds())

    class Leak(keras.callbacks.Callback):
        kept = []

        def on_epoch_end(self, epoch, logs=None):
            self.kept.append(np.ones(keep_kb_per_epoch * 1024, np.uint8))

    data = simulate_small_data()
    keras.utils.set_random_seed(0)
    model = build_model(N=16, gridsize=2, n_filters=4, probe=data.probe, intensity_scale=data.intensity_scale)
    inputs = {key: value[:SAMPLES] for key, value in data.model_inputs().items()}
    targets = {key: value[:SAMPLES] for key, value in data.model_targets().items()}
    # One repeated dataset: fit on numpy arrays would build a new input pipeline every epoch.
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(SAMPLES).cache().repeat()
    stages = [
        {"name": "container_X", "label": "Container X", "array": data.container_X},
        {"name": "prediction", "label": "Prediction", "layer": "pred_amplitude"},
        {"name": "truth", "label": "Truth", "array": data.truth_diffraction[:SAMPLES]},
    ]
    suite = default_callbacks(model, run, config={"nphotons": data.nphotons, "N": data.N}, stages=stages,
                              probe=Probe(inputs, truth=data.truth_object[:SAMPLES]), verbose=0)
    sampler = ResourceSampler()
    fds_before = open_fds()
    model.fit(dataset, steps_per_epoch=1, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=suite + [sampler] + ([Leak()] if keep_kb_per_epoch else []))
    resources = {"callbacks": len(suite), "rss_mb": sampler.rss, "fds": sampler.fds,
                 "fds_before": fds_before, "fds_after": open_fds()}
    with open(os.path.join(run, "resources.json"), "w", encoding="utf-8") as out:
        json.dump(resources, out)


def test_300_epochs_with_every_callback_do_not_leak(tmp_path):
    run = str(tmp_path / "soak")
    done = subprocess.run([sys.executable, __file__, run], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(run, "resources.json"), encoding="utf-8") as file:
        resources = json.load(file)
    assert resources["callbacks"] >= 5  # scale, loss components, NaN guard, stage statistics, report
    rss, fds = resources["rss_mb"], resources["fds"]
    assert len(rss) == len(fds) == EPOCHS

    # File descriptors: constant while training, all given back at the end.
    assert len(set(fds[WARMUP:])) == 1, sorted(set(fds[WARMUP:]))
    assert resources["fds_after"] <= resources["fds_before"]
    # Memory: levels off after the warm-up.
    growth = level_rise(rss)
    curve = [round(rss[epoch] - rss[WARMUP], 1) for epoch in range(WARMUP, EPOCHS, WINDOW)]
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS level rose {growth:.1f} MB; every {WINDOW} epochs: {curve}"

    record = RunRecord.load(os.path.join(run, "record.json"))
    assert record.status == "completed"
    assert len(record.history["loss"]) == EPOCHS
    assert len(record.log_scale["history"]) == EPOCHS
    assert os.path.getsize(os.path.join(run, "report.md")) > 0

    scalars = tensorboard_events.scalars(run)

    def assert_one_point_per(tag, count):
        steps = [step for step, _ in scalars[tag]]
        assert steps == list(range(steps[0], steps[0] + count)), (tag, steps[:3], len(steps))

    for tag in ("loss/epoch/loss", "scale/epoch/log_scale", "scale/batch/log_scale"):
        assert_one_point_per(tag, EPOCHS)  # one step per epoch: as many batch points as epochs
    for tag in ("stages/prediction/mean", "stages/ratio/prediction_to_truth", "bias/amplitude/mae"):
        assert_one_point_per(tag, EPOCHS + 1)  # train begin, then every epoch
    np.testing.assert_allclose([v for _, v in scalars["scale/epoch/log_scale"]], record.log_scale["history"],
                               rtol=1e-6)
    events = tensorboard_events.load(run)
    assert len(events.Tensors("images/amplitude")) == EPOCHS + 1
    assert len(events.Tensors("stages/prediction")) == EPOCHS + 1  # histograms
    report = tensor_util.make_ndarray(events.Tensors("report/summary")[-1].tensor_proto).item().decode()
    assert report.startswith("# Intensity Bias Summary")


if __name__ == "__main__":
    # python tests/test_soak.py RUN_DIR [KEEP_KB_PER_EPOCH]: trains, then prints the RSS level's rise.
    train(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    with open(os.path.join(sys.argv[1], "resources.json"), encoding="utf-8") as file:
        print(f"RSS level rose {level_rise(json.load(file)['rss_mb']):.2f} MB")
