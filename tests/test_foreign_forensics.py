"""A nan_forensics folder from someone else: nothing in it runs code or reads outside it unless asked."""

import json
import os
import shutil

import numpy as np
import pytest

from ptycho_callbacks import NaNGuard
from ptycho_callbacks._keras import IS_LEGACY, keras
from ptycho_callbacks.cli import replay_main

pytestmark = pytest.mark.keras


def _model(layers=()):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3,), name="x")
    hidden = inputs
    for layer in layers:
        hidden = layer(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A real forensics folder: a NaN target in the third batch of a small dense model."""
    run = tmp_path_factory.mktemp("run")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.zeros((16, 1), "float32")
    y[9] = np.nan
    _model().fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[NaNGuard(log_dir=run, verbose=0)])
    return str(run / "nan_forensics")


def _copy(folder, tmp_path):
    copy = str(tmp_path / "nan_forensics")
    shutil.copytree(folder, copy)
    return copy


def _edit_manifest(folder, change):
    path = os.path.join(folder, "manifest.json")
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def _replay(args, capsys):
    capsys.readouterr()
    status = replay_main(args)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_real_folder_replays(folder, capsys):
    status, out, err = _replay([folder], capsys)
    assert status == 0 and "loss" in out, err


def test_a_model_keras_that_is_not_a_keras_archive_is_refused_unless_unsafe(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    h5 = str(tmp_path / "model.h5")
    _model().save(h5)
    shutil.copyfile(h5, os.path.join(copy, "model.keras"))
    status, _, err = _replay([copy], capsys)
    assert status == 2 and err.count("\n") == 1 and "not a Keras zip archive" in err and "--unsafe" in err
    status, out, err = _replay([copy, "--unsafe"], capsys)
    assert "not a Keras zip archive" not in err, "--unsafe lifts the refusal"
    if IS_LEGACY:  # tf_keras loads HDF5 whatever the file's name; Keras 3 wants a .keras name for a zip only
        assert status == 0, err


def test_a_lambda_layer_in_the_saved_model_is_not_run(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    marker = tmp_path / "ran"
    ran = str(marker)
    model = _model([keras.layers.Lambda(lambda t: t + 0 * len(open(ran, "w").name))])
    if os.path.exists(ran):
        os.remove(ran)
    model.save(os.path.join(copy, "model.keras"))
    status, _, err = _replay([copy], capsys)
    assert status == 2 and err.count("\n") == 1 and not marker.exists(), err


@pytest.mark.parametrize("part, name", [
    ("model", "/etc/passwd"), ("model", "../model.keras"), ("model", "other.keras"),
    ("batch", "../../batch.npz"), ("batch", os.path.abspath(os.sep)),
])
def test_a_manifest_naming_a_file_outside_the_folder_is_refused(folder, tmp_path, capsys, part, name):
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, lambda manifest: manifest[part].update(file=name))
    status, _, err = _replay([copy], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert "not a file of the folder" in err or "only model.keras" in err


@pytest.mark.parametrize("content", [b"\xff\xfe not json", b"[" * 100_000, b'{"format_version": 1, "batch": 5}'])
def test_a_broken_manifest_is_one_error_line(folder, tmp_path, capsys, content):
    copy = _copy(folder, tmp_path)
    with open(os.path.join(copy, "manifest.json"), "wb") as handle:
        handle.write(content)
    status, _, err = _replay([copy], capsys)
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("origin", [
    {"module": "os", "qualname": "system", "instance": False},
    {"module": "subprocess", "qualname": "Popen", "instance": True, "config": {"args": ["touch", "PWNED"]}},
    {"module": "ptycho_callbacks.cli", "qualname": "main", "instance": False},
    {"keras": {"class_name": "Lambda", "config": {}}},
], ids=["os_system", "popen_class", "not_a_loss", "not_a_keras_loss"])
def test_a_manifest_cannot_make_the_replay_call_what_happens_to_be_loaded(folder, tmp_path, capsys, origin,
                                                                         monkeypatch):
    """The loss a manifest records is looked up only in packages the user named, and must be a loss."""
    copy = _copy(folder, tmp_path)
    _edit_manifest(copy, lambda manifest: manifest["losses"]["origins"].update(out=origin))
    monkeypatch.chdir(tmp_path)
    status, _, err = _replay([copy, "--import", "ptycho_callbacks.sim.model"], capsys)
    assert status == 2 and "loss of output 'out'" in err, err
    assert not os.path.exists(tmp_path / "PWNED")
