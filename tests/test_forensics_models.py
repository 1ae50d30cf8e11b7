"""Forensics for the models users fit: Sequential, dict outputs with sample weights, a size limit that cuts the batch."""

import numpy as np
import pytest

from ptycho_callbacks import NaNGuard
from ptycho_callbacks._keras import IS_LEGACY, keras
from ptycho_callbacks.cli import replay_main
from ptycho_callbacks.nan.capture import read_manifest
from ptycho_callbacks.nan.replay import replay_folder

pytestmark = pytest.mark.keras

NAN_SAMPLE = 19  # batch 2 (of 8), sample 3


def _sequential():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(1, name="out")])
    model.compile(optimizer="sgd", loss="mse")
    return model, None


def _two_outputs():
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    model = keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(hidden),
                                 "b": keras.layers.Dense(2, name="b")(hidden)})
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "mae"}, loss_weights={"a": 1.0, "b": 0.5})
    return model, "a"


@pytest.mark.parametrize("build", [_sequential, _two_outputs], ids=["sequential", "dict_outputs"])
@pytest.mark.parametrize("max_bytes", [None, 20_000], ids=["whole", "cut"])
def test_the_failing_sample_is_found_live_and_offline(build, max_bytes, tmp_path, capsys):
    keras.utils.set_random_seed(3)
    model, output = build()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    targets = np.zeros((32, 1), "float32")
    targets[NAN_SAMPLE] = np.nan
    y = targets if output is None else {"a": targets, "b": np.zeros((32, 2), "float32")}
    weights = rng.uniform(0.5, 1.5, size=(32,)).astype("float32")
    options = {} if max_bytes is None else {"forensics_max_bytes": max_bytes}
    guard = NaNGuard(log_dir=tmp_path, verbose=0, **options)
    model.fit(x, y, sample_weight=weights, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[guard])

    assert [f["code"] for f in guard.record.findings] == [], guard.record.findings
    forensics = guard.record.forensics
    assert forensics["stage"] == "loss" and forensics["samples"] == [NAN_SAMPLE % 8]
    assert forensics["layer"] == ("out" if output is None else "a")
    manifest = read_manifest(forensics["folder"])
    if max_bytes is not None:
        assert manifest["batch"]["samples"] == [NAN_SAMPLE % 8], "the batch keeps the sample that matters"
    if manifest["model"]["file"]:
        capsys.readouterr()
        assert replay_main([str(tmp_path), "--json"]) == 0
        assert f'"samples": [\n    {NAN_SAMPLE % 8}\n  ]' in capsys.readouterr().out
    else:  # the size limit dropped the model: the live one replays the saved batch
        assert replay_folder(forensics["folder"], model=model)["samples"] == [NAN_SAMPLE % 8]


def test_class_weights_reach_the_replay_as_the_sample_weights_keras_made_of_them(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="logits")])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    x[NAN_SAMPLE] = np.nan
    labels = np.arange(32) % 3
    guard = NaNGuard(log_dir=tmp_path, verbose=0)
    model.fit(x, labels, class_weight={0: 1.0, 1: 2.0, 2: 0.5}, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[guard])
    assert [f["code"] for f in guard.record.findings] == [], guard.record.findings
    forensics = guard.record.forensics
    assert forensics["stage"] == "forward" and forensics["layer"] == "logits"
    assert forensics["samples"] == [NAN_SAMPLE % 8]
    offline = replay_folder(forensics["folder"])
    assert (offline["stage"], offline["layer"], offline["samples"]) == ("forward", "logits", [NAN_SAMPLE % 8])


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.out = keras.layers.Dense(4), keras.layers.Dense(1)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


class OwnStep(keras.Model):
    def train_step(self, data):
        return super().train_step(data)


def _own_step_model():
    inputs = keras.Input((3,))
    return OwnStep(inputs, keras.layers.Dense(1, name="out")(inputs))


@pytest.mark.parametrize("build", [Subclassed, _own_step_model], ids=["subclassed", "own_train_step"])
def test_subclassed_and_own_step_models_get_forensics_and_say_what_the_replay_cannot_do(build, tmp_path, capsys):
    keras.utils.set_random_seed(3)
    model = build()
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = np.zeros((32, 1), "float32")
    y[NAN_SAMPLE] = np.nan
    guard = NaNGuard(log_dir=tmp_path, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    forensics = guard.record.forensics
    assert forensics["stage"] == "loss" and forensics["samples"] == [NAN_SAMPLE % 8]
    assert ("caveat" in forensics) is (build is _own_step_model)
    if build is _own_step_model:
        assert "OwnStep.train_step" in forensics["caveat"] and "not that one" in forensics["caveat"]
    capsys.readouterr()
    status = replay_main([str(tmp_path)])
    err = capsys.readouterr().err
    if IS_LEGACY:  # tf_keras revives an unregistered class as a plain model
        assert status == 0, err
    else:  # Keras 3 cannot: one clear line, not a page of the model's config
        assert status == 2 and err.count("\n") == 1 and "--import MODULE" in err and "Full object config" not in err
    assert replay_folder(forensics["folder"], model=model)["samples"] == [NAN_SAMPLE % 8]
