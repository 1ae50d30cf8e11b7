"""Soak test: 300 short epochs with every callback of `default_callbacks` on.

Host memory (VmRSS) and open file descriptors must level off after a
warm-up, and the event files must read back, after all those epochs, with one
point per epoch.
"""

import os

import numpy as np
import tensorflow as tf
from tensorboard.util import tensor_util

from ptycho_callbacks import default_callbacks
from ptycho_callbacks._keras import keras
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.sim.model import build_model

import tensorboard_events

EPOCHS = 300
WARMUP = 50
"""Epochs after which TensorFlow's caches, the writers and the tracing are in place."""
RSS_GROWTH_LIMIT_MB = 6.0
"""Allowed RSS growth over the 250 epochs after the warm-up. Measured: 2.5 to 3 MB (the per-epoch
history, and LossComponents' per-batch values written as Python floats). Writing StageStatistics'
~50 summary values per epoch as Python floats too, which TensorFlow keeps as eager constants, made
it 7 to 9 MB; keeping one probe batch (4x16x16x4 complex64, 32 kB) per epoch would add 8 MB."""
SAMPLES = 4


def rss_mb():
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class ResourceSampler(keras.callbacks.Callback):
    """RSS (MB) and number of open file descriptors at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.rss, self.fds = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.rss.append(rss_mb())
        self.fds.append(open_fds())


def test_300_epochs_with_every_callback_do_not_leak(small_data, tmp_path):
    data = small_data
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
    run = str(tmp_path / "soak")
    suite = default_callbacks(model, run, config={"nphotons": data.nphotons, "N": data.N}, stages=stages,
                              probe_inputs=inputs, truth=data.truth_object[:SAMPLES], verbose=0)
    assert len(suite) >= 5  # scale, loss components, NaN guard, stage statistics, report
    sampler = ResourceSampler()
    fds_before = open_fds()
    model.fit(dataset, steps_per_epoch=1, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=suite + [sampler])

    # File descriptors: constant while training, all given back at the end.
    assert len(set(sampler.fds[WARMUP:])) == 1, sorted(set(sampler.fds[WARMUP:]))
    assert open_fds() <= fds_before
    # Memory: levels off after the warm-up.
    growth = max(sampler.rss[WARMUP:]) - sampler.rss[WARMUP - 1]
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MB over {EPOCHS - WARMUP} epochs"

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
