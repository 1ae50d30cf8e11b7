"""NaN forensics: replaying a failing step names its stage, layer, op and samples; the saved folder.

The stand-in model has a ReLU amplitude head and zero biases at
initialisation, so a sample whose input is all zero predicts an intensity of
exactly 0: the Poisson NLL then takes log(0) for that sample only.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from model_state import model_weights

from ptycho_callbacks._keras import keras
from ptycho_callbacks.cli import replay_main
from ptycho_callbacks.nan import capture
from ptycho_callbacks.nan.replay import numerics_checked, replay, replay_folder
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.render import forensics_lines
from ptycho_callbacks.sim.model import IntensityScaler_inv

pytestmark = pytest.mark.keras

BATCH = 4
DEAD_SAMPLE = 2


@pytest.fixture(scope="module")
def relu_model(make_model):
    return make_model(0, amplitude_activation="relu")


def _batch(data, zero_sample=None, inf_sample=None):
    x = {key: np.array(value[:BATCH]) for key, value in data.model_inputs().items()}
    y = {key: np.array(value[:BATCH]) for key, value in data.model_targets().items()}
    if zero_sample is not None:
        x["input"][zero_sample] = 0.0
    if inf_sample is not None:
        x["input"][inf_sample, 5, 5, 1] = np.inf
    return x, y, None


def _with_nan_in(model, variable_name):
    weights = model_weights(model)
    planted = []
    for name, value in weights:
        if name == variable_name:
            value = value.copy()
            value.flat[0] = np.nan
        planted.append((name, value))
    return planted


def _answer(result):
    return {key: result[key] for key in ("stage", "layer", "op", "loss", "samples")}


# ------------------------------------------------------------------ replay
def test_zero_predicted_intensity_is_traced_to_the_log_of_the_poisson_nll(relu_model, small_data):
    result = replay(relu_model, _batch(small_data, zero_sample=DEAD_SAMPLE))
    assert _answer(result) == {"stage": "loss", "layer": "pred_intensity", "op": "Log", "loss": "negloglik",
                               "samples": [DEAD_SAMPLE]}
    assert result["check_numerics"]["function"] == "negloglik"
    assert result["check_numerics"]["component"] == "pred_intensity_loss"
    components = result["loss_components"]
    assert components["pred_intensity_loss"]["finite"] is False and components["pred_intensity_loss"]["value"] is None
    assert components["intensity_scaler_inv_loss"]["finite"] is True
    assert result["nonfinite_layers"] == [] and result["nonfinite_weights"] == []
    assert "`Log` in `negloglik`" in result["message"]
    json.dumps(result, allow_nan=False)  # JSON-safe


def test_nan_planted_in_one_layers_weights_is_traced_to_that_layer(relu_model, small_data):
    before = model_weights(relu_model)
    result = replay(relu_model, _batch(small_data), weights=_with_nan_in(relu_model, "enc2/kernel"))
    assert result["stage"] == "forward" and result["layer"] == "enc2"
    assert result["nonfinite_weights"] == ["enc2/kernel"]
    assert result["nonfinite_layers"][0] == "enc2"
    assert result["check_numerics"]["layer"] == "enc2" and result["op"] in ("ReadVariableOp", "Conv2D")
    assert result["samples"] == list(range(BATCH))
    norms = {entry["layer"]: entry for entry in result["gradient_norms"]}
    assert norms["enc2"]["finite"] is False and norms["enc2"]["norm"] is None
    for (name, value), (_, after) in zip(before, model_weights(relu_model)):
        np.testing.assert_array_equal(value, after, err_msg=name)  # the replay put the weights back


def test_inf_planted_in_one_input_sample_names_that_sample(relu_model, small_data):
    result = replay(relu_model, _batch(small_data, inf_sample=3))
    assert result["stage"] == "forward" and result["samples"] == [3]
    assert result["inputs"]["x/input"] == {"nonfinite": [3], "extreme": []}
    assert result["layer"] == "intensity_scaler" and result["op"] == "RealDiv"
    assert "samples [3]" in result["message"]


def test_a_nan_made_by_the_backward_pass_names_the_layer_and_the_samples():
    class Sqrt(keras.layers.Layer):
        def call(self, inputs):
            return tf.sqrt(inputs)

    inputs = keras.Input((3,), name="inputs")
    hidden = keras.layers.Dense(3, activation="relu", name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(Sqrt(name="root")(hidden)))
    model.compile(optimizer="sgd", loss="mse")
    dense = model.get_layer("dense")
    dense.kernel.assign(np.diag([1.0, -1.0, 1.0]).astype(np.float32))
    dense.bias.assign(np.zeros(3, np.float32))
    # sqrt'(0) is Inf: samples 0 and 2 reach the root with a 0 (relu of a negative), sample 1 does not.
    x = np.array([[1, 1, 1], [2, -1, 1], [1, 2, 3]], np.float32)
    result = replay(model, (x, np.ones((3, 1), np.float32)))
    assert result["stage"] == "gradients" and result["layer"] == "root"
    assert result["op"] == "SqrtGrad" and result["samples"] == [0, 2]
    assert result["total_loss"] is not None


def test_a_finite_step_is_stage_none(relu_model, small_data):
    result = replay(relu_model, _batch(small_data))
    assert result["stage"] == "none" and result["op"] is None and result["check_numerics"] is None
    assert all(entry["finite"] for entry in result["gradient_norms"])
    assert "optimizer" in result["message"]


def _log_of_zero():
    return float(tf.math.log(tf.constant(0.0)))


def test_numeric_checking_is_on_only_during_the_replay_and_restored_on_error():
    filtering = tf.debugging.is_traceback_filtering_enabled()
    assert _log_of_zero() == -np.inf
    with pytest.raises(RuntimeError, match="inside"):
        with numerics_checked():
            with pytest.raises(tf.errors.InvalidArgumentError):
                _log_of_zero()
            assert not tf.debugging.is_traceback_filtering_enabled()
            raise RuntimeError("inside")
    assert _log_of_zero() == -np.inf
    assert tf.debugging.is_traceback_filtering_enabled() == filtering
    tf.debugging.enable_check_numerics()  # a user's own checking stays on
    try:
        with numerics_checked():
            pass
        with pytest.raises(tf.errors.InvalidArgumentError):
            _log_of_zero()
    finally:
        tf.debugging.disable_check_numerics()


# ---------------------------------------------------------- the saved folder
def test_the_stand_in_saves_and_loads_as_ptychopinn_does(make_model, small_data, tmp_path):
    """Unregistered losses: the compile config does not load. A loaded model's layers pick up the process's
    `log_scale` (PtychoPINN's module cache), the "keras" style has its own saved copy."""
    inputs = {key: value[:BATCH] for key, value in small_data.model_inputs().items()}
    for style in ("keras", "ptychopinn"):
        model = make_model(scaler_style=style)
        model.get_layer("intensity_scaler").w.assign(7.0)  # a log_scale the config alone would not give
        path = str(tmp_path / f"{style}.keras")
        model.save(path)
        with pytest.raises(Exception, match="RealspaceLoss|negloglik"):
            keras.models.load_model(path)
        loaded = keras.models.load_model(path, compile=False)
        assert isinstance(loaded.get_layer("intensity_scaler_inv"), IntensityScaler_inv)
        assert float(tf.convert_to_tensor(loaded.get_layer("intensity_scaler_inv").w)) == pytest.approx(7.0)
        shares = loaded.get_layer("intensity_scaler").w is model.get_layer("intensity_scaler").w
        assert shares == (style == "ptychopinn"), style
        for ours, theirs in zip(model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)):
            np.testing.assert_allclose(theirs, ours, rtol=1e-6, err_msg=style)


EVENT = {"epoch": 0, "batch": 1, "step": 2, "phase": "train", "components": ["pred_intensity_loss"],
         "values": {"pred_intensity_loss": float("inf")}}


@pytest.fixture(scope="module")
def saved(relu_model, small_data, tmp_path_factory):
    """A folder written for the zero-intensity batch, and the live replay of that batch."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    batch = _batch(small_data, zero_sample=DEAD_SAMPLE)
    weights = model_weights(relu_model)
    optimizer = [("adam/m", np.ones((8, 8), np.float32))]
    folder = capture.write_forensics(run_dir, relu_model, batch, weights, optimizer, EVENT)
    return run_dir, folder, batch, weights, replay(relu_model, batch)


def test_folder_holds_batch_weights_optimizer_state_model_and_manifest(saved, relu_model):
    run_dir, folder, batch, weights, _ = saved
    assert folder == os.path.join(run_dir, "nan_forensics")
    assert sorted(os.listdir(folder)) == ["batch.npz", "manifest.json", "model.keras", "optimizer_state.npz",
                                          "weights_before.npz"]
    assert sorted(os.listdir(run_dir)) == ["nan_forensics"]  # no temporary directory left
    manifest = capture.read_manifest(folder)
    assert manifest["event"] == EVENT and manifest["dropped"] == []
    assert manifest["batch"]["batch_size"] == BATCH and manifest["batch"]["samples"] == list(range(BATCH))
    x, y, sample_weight = capture.read_batch(folder, manifest)
    np.testing.assert_array_equal(x["input"], batch[0]["input"])
    np.testing.assert_array_equal(y["trimmed_obj"], batch[1]["trimmed_obj"])  # complex targets kept
    assert sample_weight is None
    for (name, value), (saved_name, saved_value) in zip(weights, capture.read_weights(folder, manifest)):
        assert name == saved_name
        np.testing.assert_array_equal(value, saved_value)


def test_folder_is_written_once(saved, relu_model, small_data):
    run_dir, folder, batch, weights, _ = saved
    again = capture.write_forensics(run_dir, relu_model, batch, weights, None, {"epoch": 9})
    assert again == folder and capture.read_manifest(folder)["event"] == EVENT


def test_a_failed_write_leaves_nothing(relu_model, tmp_path):
    bad_batch = ({"input": np.float32(1.0)}, None, None)  # no sample axis
    with pytest.raises(capture.ForensicsError, match="sample axis"):
        capture.write_forensics(str(tmp_path), relu_model, bad_batch, [], None, EVENT)
    assert os.listdir(tmp_path) == []


def test_replay_of_the_folder_gives_the_live_answer(saved, relu_model):
    _, folder, _, _, live = saved
    offline = replay_folder(folder)  # the saved model.keras, loaded
    assert _answer(offline) == _answer(live)
    assert offline["event"] == EVENT and offline["folder"] == os.path.abspath(folder)
    with_model = replay_folder(os.path.dirname(folder), model=relu_model)
    assert _answer(with_model) == _answer(live)


def test_size_limit_drops_optimizer_state_then_keeps_the_samples_that_matter(saved, relu_model, tmp_path):
    run_dir, folder, batch, weights, live = saved
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
    max_bytes = sizes["model.keras"] + sizes["weights_before.npz"] + sizes["batch.npz"] // 2
    optimizer = [("adam/m", np.ones(10**6, np.float32))]
    limited = capture.write_forensics(str(tmp_path), relu_model, batch, weights, optimizer, EVENT,
                                      max_bytes=max_bytes, involved_samples=live["samples"])
    manifest = capture.read_manifest(limited)
    assert [d["part"] for d in manifest["dropped"]] == ["optimizer_state", "samples"]
    assert manifest["batch"]["samples"] == [DEAD_SAMPLE] and manifest["optimizer_state"] is None
    assert sum(os.path.getsize(os.path.join(limited, name)) for name in os.listdir(limited)
               if name != "manifest.json") <= max_bytes
    x, _, _ = capture.read_batch(limited, manifest)
    assert x["input"].shape[0] == 1
    assert _answer(replay_folder(limited)) == _answer(live)  # indices of the original batch


def test_tiny_size_limit_keeps_the_manifest_and_says_what_was_dropped(saved, relu_model, tmp_path):
    _, _, batch, weights, _ = saved
    folder = capture.write_forensics(str(tmp_path), relu_model, batch, weights, None, EVENT, max_bytes=1000)
    assert os.listdir(folder) == ["manifest.json"]
    manifest = capture.read_manifest(folder)
    assert {d["part"] for d in manifest["dropped"]} >= {"model", "weights_before", "batch"}
    with pytest.raises(capture.ForensicsError, match="no batch saved"):
        replay_folder(folder)


def test_a_batch_not_captured_is_said_in_the_manifest(relu_model, tmp_path):
    folder = capture.write_forensics(str(tmp_path), relu_model, None, model_weights(relu_model), None,
                                     EVENT)
    manifest = capture.read_manifest(folder)
    assert manifest["batch"]["file"] is None and manifest["batch"]["reason"] == "the batch was not captured"
    assert manifest["model"]["file"] == "model.keras"
    with pytest.raises(capture.ForensicsError, match="the batch was not captured"):
        replay_folder(folder)


# ------------------------------------------------------------------- the CLI
def test_replay_cli_prints_writes_back_and_refuses_bad_input(saved, tmp_path, capsys):
    run_dir, folder, _, _, live = saved
    assert replay_main([run_dir, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _answer(printed) == _answer(live)

    RunRecord(scenario="run", status="stopped_nan").save(os.path.join(run_dir, "record.json"))
    assert replay_main([folder, "--write"]) == 0
    out = capsys.readouterr().out
    assert "### NaN Forensics" in out and "- Op: `Log` in `negloglik`" in out
    record = RunRecord.load(os.path.join(run_dir, "record.json"))
    assert _answer(record.forensics) == _answer(live)
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as handle:
        report = handle.read()
    assert "- Layer: `pred_intensity`" in report and f"- Samples involved: [{DEAD_SAMPLE}] of {BATCH}" in report
    os.remove(os.path.join(run_dir, "record.json"))
    os.remove(os.path.join(run_dir, "report.md"))

    assert replay_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptycho-callbacks replay: error:") and "missing" in err[0]
    assert replay_main([str(tmp_path)]) == 2
    assert "no nan_forensics/manifest.json" in capsys.readouterr().err


def test_forensics_section_prints_na_with_reasons():
    lines = forensics_lines({"stage": "n/a", "reason": "the batch was not captured"})
    assert "- Where: n/a (the batch was not captured)" in lines
    finite = forensics_lines({"stage": "none", "check_numerics": None, "samples": [], "batch_size": 4,
                              "gradient_norms": [{"layer": "enc1", "norm": None, "finite": False}]})
    assert "- Op: n/a (not checked: the step is finite)" in finite
    assert "| `enc1` | n/a (not finite) |" in finite
    assert "- Samples involved: n/a (no sample singled out)" in finite
