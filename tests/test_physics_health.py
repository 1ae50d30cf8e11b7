"""PhysicsHealth on the stand-in model: what it logs to TensorBoard and the record, and its errors.

16 samples in batches of 4 make 4 optimizer steps per epoch.
"""

import numpy as np
import pytest

from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.physics_health import PhysicsHealth
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.suite import Probe, default_callbacks

import tensorboard_events

pytestmark = pytest.mark.keras

PROBE = 4
SEED = 0
"""Keras's random seed before each stand-in model (`make_model`) is built."""


def _probe(data):
    inputs = {key: value[:PROBE] for key, value in data.model_inputs().items()}
    return inputs, data.model_targets()["pred_intensity"][:PROBE]


def test_logs_every_measure_at_train_begin_and_each_epoch(make_model, small_data, tmp_path):
    model = make_model(SEED)
    inputs, counts = _probe(small_data)
    health = PhysicsHealth(inputs, counts, log_dir=str(tmp_path))
    model.fit(small_data.model_inputs(), small_data.model_targets(), batch_size=4, epochs=2,
              shuffle=False, verbose=0, callbacks=[health])
    record = health.record
    assert [(e["epoch"], e["step"]) for e in record.physics] == [(0, 0), (1, 4), (2, 8)]

    # The last evaluation, measured again from the trained model.
    predicted = model.predict(inputs, verbose=0)[2].astype(np.float64)
    ratios = predicted.sum(axis=(1, 2)) / counts.astype(np.float64).sum(axis=(1, 2))
    last = record.physics[-1]
    assert last["photon_budget"]["mean"] == pytest.approx(ratios.mean(), rel=1e-4)
    assert last["photon_budget"]["count"] == PROBE * 4
    assert last["nonpositive_fraction"]["fraction"] == pytest.approx(np.mean(predicted <= 0))
    assert last["saturation_fraction"]["low"] == 0.0 and last["saturation_fraction"]["high"] == 1.0  # sigmoid

    scalars = tensorboard_events.scalars(str(tmp_path))
    for tag in ("physics/photon_budget/mean", "physics/photon_budget/p05", "physics/photon_budget/p95",
                "physics/nonpositive_fraction", "physics/saturation_fraction"):
        assert [step for step, _ in scalars[tag]] == [0, 1, 2], tag
    budget = [value for _, value in scalars["physics/photon_budget/mean"]]
    assert budget == pytest.approx([e["photon_budget"]["mean"] for e in record.physics], rel=1e-6)

    record.save(tmp_path / "record.json")
    assert RunRecord.load(tmp_path / "record.json").physics == record.physics


def test_a_dead_relu_head_shows_in_every_measure(make_model, small_data):
    model = make_model(SEED, amplitude_activation="relu")
    head = model.get_layer("amp_head")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.full(head.bias.shape, -1.0, np.float32))
    health = PhysicsHealth(*_probe(small_data))
    health.set_model(model)
    health.on_train_begin()
    health.on_epoch_begin(0)
    (evaluation,) = health.record.physics
    assert evaluation["photon_budget"]["mean"] == 0.0
    assert evaluation["nonpositive_fraction"]["fraction"] == 1.0
    assert evaluation["saturation_fraction"]["fraction"] == 1.0
    assert evaluation["saturation_fraction"]["high"] is None  # ReLU: bounded below only


def test_every_n_epochs_the_last_epoch_at_train_end_and_a_resumed_fit(make_model, small_data):
    model = make_model(SEED)
    health = PhysicsHealth(*_probe(small_data), every_n_epochs=2)
    fit = dict(batch_size=4, shuffle=False, verbose=0, callbacks=[health])
    model.fit(small_data.model_inputs(), small_data.model_targets(), epochs=3, **fit)
    assert [(e["epoch"], e["step"]) for e in health.record.physics] == [(0, 0), (2, 8), (3, 12)]
    model.fit(small_data.model_inputs(), small_data.model_targets(), initial_epoch=3, epochs=4, **fit)
    assert [(e["epoch"], e["step"]) for e in health.record.physics[3:]] == [(3, 12), (4, 16)]


def test_saturation_without_amplitude_layer_or_known_activation_is_na(small_data):
    diffraction = keras.Input((16, 16, 4), name="input")
    intensity = keras.layers.Activation("linear", name="pred_intensity")(diffraction)
    model = keras.Model(diffraction, intensity)
    inputs = small_data.model_inputs()["input"][:PROBE]
    health = PhysicsHealth(inputs, inputs)
    health.set_model(model)
    health.on_train_begin()
    health.on_train_end()  # no epoch ran: the train-begin evaluation is recorded at train end
    (evaluation,) = health.record.physics
    assert evaluation["photon_budget"]["mean"] == pytest.approx(1.0)
    assert evaluation["saturation_fraction"]["fraction"] is None
    assert "no amplitude layer" in evaluation["saturation_fraction"]["reason"]

    named = PhysicsHealth(inputs, inputs, amplitude_layer="pred_intensity")
    named.set_model(model)
    named.on_train_begin()
    named.on_epoch_begin(0)
    assert "bounds of activation 'linear' unknown" in named.record.physics[0]["saturation_fraction"]["reason"]


def test_bad_arguments_are_refused(make_model, small_data):
    inputs, counts = _probe(small_data)
    with pytest.raises(ValueError, match="every_n_epochs"):
        PhysicsHealth(inputs, counts, every_n_epochs=0)
    with pytest.raises(ValueError, match="probe_counts"):
        PhysicsHealth(inputs, counts.astype(np.complex64))
    model = make_model(SEED)
    for health, match in ((PhysicsHealth(inputs, counts, intensity_output="pred_intensty"), "no layer named"),
                          (PhysicsHealth(inputs, counts[:, :8]), "shape")):
        health.set_model(model)
        with pytest.raises(ValueError, match=match):
            health.on_train_begin()


def test_default_callbacks_add_it_only_with_probe_inputs_and_counts(make_model, small_data, tmp_path):
    model = make_model(SEED)
    inputs, counts = _probe(small_data)
    with_counts = default_callbacks(model, str(tmp_path / "a"), probe=Probe(inputs, counts=counts))
    assert [type(c).__name__ for c in with_counts].count("PhysicsHealth") == 1
    without = default_callbacks(model, str(tmp_path / "b"), probe=Probe(inputs))
    assert "PhysicsHealth" not in [type(c).__name__ for c in without]
