"""Tests of StageStatistics: what it writes is read back with TensorBoard's own reader
and compared with independent numpy computations."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.util import tensor_util

from ptycho_callbacks._keras import keras
from ptycho_callbacks.callbacks.stage_statistics import StageStatistics
from ptycho_callbacks.record import RunRecord

import tensorboard_events

pytestmark = pytest.mark.keras

PROBE = 4  # samples in the probe batch
SEED = 0
"""Keras's random seed before each stand-in model (`make_model`) is built. The models run eagerly
(`run_eagerly=True`): two tiny batches per epoch, tracing would cost more than it saves."""


# ------------------------------------------------------------------ helpers
def _probe(data):
    return {key: value[:PROBE] for key, value in data.model_inputs().items()}


def _fit(model, data, callback, epochs=1, **kwargs):
    """Trains on 8 samples, one step per epoch (the callback's cost is what is tested)."""
    inputs = {key: value[:8] for key, value in data.model_inputs().items()}
    targets = {key: value[:8] for key, value in data.model_targets().items()}
    return model.fit(inputs, targets, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=[callback], **kwargs)


def _series(events, tag):
    """[(step, value)] of a scalar tag (TF2 writes scalars as tensors)."""
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


def _tags(events):
    return set(events.Tags()["tensors"])


def _layer_values(model, layer_name, inputs):
    """The layer's output on `inputs`, computed here independently of the callback."""
    sub = keras.Model(model.inputs, model.get_layer(layer_name).output)
    return np.asarray(sub(inputs, training=False))


# ------------------------------------------------------------------ array stages
def test_array_stages_are_logged_and_recorded_like_numpy(make_model, small_data, tmp_path):
    data = small_data
    callback = StageStatistics(data.stages(), log_dir=str(tmp_path))
    _fit(make_model(SEED, run_eagerly=True), data, callback, epochs=1)
    events = tensorboard_events.load(str(tmp_path))

    for name, label, source, array in data.stages():
        values = np.asarray(array, dtype=np.float64)
        expected = {"mean": values.mean(), "std": values.std(), "min": values.min(),
                    "max": values.max(), "count": values.size, "nan_count": 0}
        for key, value in expected.items():
            series = _series(events, f"stages/{name}/{key}")
            assert [step for step, _ in series] == [0, 1], (name, key)
            for _, logged in series:
                assert logged == pytest.approx(value, rel=1e-5), (name, key)
        # The array does not change: its histogram is written once, with every value.
        histogram = events.Tensors(f"stages/{name}")
        assert [e.step for e in histogram] == [0]
        buckets = tensor_util.make_ndarray(histogram[0].tensor_proto)
        assert buckets[:, 2].sum() == pytest.approx(values.size)
        assert buckets[0, 0] == pytest.approx(values.min(), rel=1e-5)
        assert buckets[-1, 1] == pytest.approx(values.max(), rel=1e-5)

    assert [s["name"] for s in callback.record.stages] == [s[0] for s in data.stages()]
    for stage, (name, label, source, array) in zip(callback.record.stages, data.stages()):
        assert (stage["label"], stage["source"]) == (label, source)
        assert stage["stats"]["mean"] == pytest.approx(float(np.mean(array, dtype=np.float64)))
        assert stage["stats"]["count"] == array.size

    # Ratio of two stages: the normalization gain, mean(normalized) / mean(grouped).
    ratio = _series(events, "stages/ratio/grouped_diffraction_to_grouped_X_full")
    expected_ratio = np.mean(data.normalized, dtype=np.float64) / np.mean(data.grouped_diffraction,
                                                                         dtype=np.float64)
    assert ratio == [(0, pytest.approx(expected_ratio, rel=1e-5)), (1, pytest.approx(expected_ratio, rel=1e-5))]
    assert expected_ratio == pytest.approx(data.normalize_gain, rel=1e-4)
    # The chain product telescopes to mean(last) / mean(first).
    chain = np.mean(data.container_X, dtype=np.float64) / np.mean(data.raw_diffraction, dtype=np.float64)
    assert _series(events, "stages/invariant/chain_product")[-1][1] == pytest.approx(chain, rel=1e-5)
    assert _series(events, "stages/invariant/deviation")[-1][1] == pytest.approx(abs(chain - 1), rel=1e-5)
    # No ground truth: no bias and no images.
    assert not any(tag.startswith(("bias/", "images/")) for tag in _tags(events))


def test_tuple_specs_of_two_items_and_dict_specs_mix(tmp_path):
    a, b = np.full((4, 3), 2.0), np.full(5, 3.0)
    callback = StageStatistics([("a", a), {"name": "b", "label": "B", "source": "here", "array": b}])
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    callback.on_train_begin()
    callback.on_train_end()
    assert callback.record.stages == [
        {"name": "a", "label": "a", "source": None, "stats": callback.record.stages[0]["stats"]},
        {"name": "b", "label": "B", "source": "here", "stats": callback.record.stages[1]["stats"]},
    ]
    assert callback.record.stages[1]["stats"]["mean"] == 3.0


# ------------------------------------------------------------------ layer and fn stages
def test_layer_stages_are_evaluated_on_the_probe_batch(make_model, small_data, tmp_path):
    data = small_data
    model = make_model(SEED, run_eagerly=True)
    probe = _probe(data)
    before_amp = _layer_values(model, "pred_amplitude", probe)
    before_obj = _layer_values(model, "trimmed_obj", probe)
    assert np.iscomplexobj(before_obj)
    stages = [{"name": "container_X", "array": data.container_X},
              {"name": "prediction", "label": "Prediction", "layer": "pred_amplitude"},
              {"name": "object", "layer": "trimmed_obj"}]
    callback = StageStatistics(stages, probe_inputs=probe, log_dir=str(tmp_path))
    _fit(model, data, callback, epochs=2)
    after_amp = _layer_values(model, "pred_amplitude", probe)
    after_obj = _layer_values(model, "trimmed_obj", probe)
    events = tensorboard_events.load(str(tmp_path))

    means = _series(events, "stages/prediction/mean")
    assert [step for step, _ in means] == [0, 1, 2]
    assert means[0][1] == pytest.approx(before_amp.mean(dtype=np.float64), rel=1e-5)
    assert means[-1][1] == pytest.approx(after_amp.mean(dtype=np.float64), rel=1e-5)
    assert means[0][1] != pytest.approx(means[-1][1], rel=1e-6)  # training moved it
    assert _series(events, "stages/prediction/count")[-1][1] == after_amp.size
    # Complex outputs are summarised by their modulus.
    obj_max = _series(events, "stages/object/max")
    assert obj_max[0][1] == pytest.approx(np.abs(before_obj).max(), rel=1e-5)
    assert obj_max[-1][1] == pytest.approx(np.abs(after_obj).max(), rel=1e-5)
    # Layer stages change: one histogram per evaluation, of the probe batch.
    histograms = events.Tensors("stages/prediction")
    assert [e.step for e in histograms] == [0, 1, 2]
    assert tensor_util.make_ndarray(histograms[-1].tensor_proto)[:, 2].sum() == pytest.approx(after_amp.size)

    assert [s["name"] for s in callback.record.stages] == ["container_X", "prediction", "object"]
    assert callback.record.stages[1]["label"] == "Prediction"
    assert callback.record.stages[1]["stats"]["mean"] == pytest.approx(after_amp.mean(dtype=np.float64), rel=1e-5)
    assert callback.record.stages[2]["stats"]["mean"] == pytest.approx(
        np.abs(after_obj).mean(dtype=np.float64), rel=1e-5)
    ratio = _series(events, "stages/ratio/container_X_to_prediction")[-1][1]
    assert ratio == pytest.approx(after_amp.mean(dtype=np.float64) / data.container_X.mean(dtype=np.float64),
                                  rel=1e-5)


def test_fn_stage_is_called_at_each_evaluation(make_model, small_data, tmp_path):
    data = small_data
    calls = []

    def scale(model):
        calls.append(1)
        return np.exp(np.asarray(model.get_layer("intensity_scaler").w)).reshape(1)

    model = make_model(SEED, run_eagerly=True)
    callback = StageStatistics([{"name": "scale", "fn": scale}], log_dir=str(tmp_path))
    _fit(model, data, callback, epochs=2)
    assert len(calls) == 3  # train begin + 2 epochs
    expected = float(np.exp(np.asarray(model.get_layer("intensity_scaler").w)))
    assert _series(tensorboard_events.load(str(tmp_path)), "stages/scale/mean")[-1] == (2, pytest.approx(expected, rel=1e-5))
    assert callback.record.stages[0]["stats"]["mean"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ steps
def test_every_n_epochs_logs_at_start_multiples_and_end(make_model, small_data, tmp_path):
    data = small_data
    stages = [{"name": "prediction", "layer": "pred_amplitude"}]
    callback = StageStatistics(stages, probe_inputs=_probe(data), every_n_epochs=2, log_dir=str(tmp_path))
    _fit(make_model(SEED, run_eagerly=True), data, callback, epochs=3)
    events = tensorboard_events.load(str(tmp_path))
    for tag in ("stages/prediction/mean", "stages/prediction/nan_count", "stages/prediction"):
        assert [e.step for e in events.Tensors(tag)] == [0, 2, 3], tag


def test_resumed_fit_counts_steps_from_initial_epoch(make_model, small_data, tmp_path):
    data = small_data
    callback = StageStatistics([{"name": "prediction", "layer": "pred_amplitude"}],
                               probe_inputs=_probe(data), log_dir=str(tmp_path))
    _fit(make_model(SEED, run_eagerly=True), data, callback, epochs=4, initial_epoch=2)
    assert [s for s, _ in _series(tensorboard_events.load(str(tmp_path)), "stages/prediction/mean")] == [2, 3, 4]


# ------------------------------------------------------------------ ground truth
def test_truth_gives_bias_statistics_scalars_and_images(make_model, small_data, tmp_path):
    data = small_data
    model = make_model(SEED, run_eagerly=True)
    probe = _probe(data)
    truth = data.truth_object[:PROBE]
    callback = StageStatistics(data.stages(), probe_inputs=probe, truth=truth, max_images=2,
                               log_dir=str(tmp_path))
    _fit(model, data, callback, epochs=1)
    pred = _layer_values(model, "trimmed_obj", probe)
    pred_amp, truth_amp = np.abs(pred).astype(np.float64), np.abs(truth).astype(np.float64)
    difference = pred_amp - truth_amp
    phase_difference = np.angle(np.exp(1j * (np.angle(pred).astype(np.float64) - np.angle(truth))))

    prediction = callback.record.prediction
    assert set(prediction) == {"scaling", "amplitude_bias", "phase_bias"}
    assert prediction["amplitude_bias"]["mean"] == pytest.approx(difference.mean(), rel=1e-5)
    assert prediction["amplitude_bias"]["rmse"] == pytest.approx(np.sqrt(np.mean(difference ** 2)), rel=1e-5)
    assert prediction["amplitude_bias"]["count"] == truth.size
    assert prediction["phase_bias"]["mean"] == pytest.approx(phase_difference.mean(), rel=1e-4, abs=1e-6)
    assert prediction["phase_bias"]["mae"] == pytest.approx(np.abs(phase_difference).mean(), rel=1e-4)
    least_squares = np.sum(pred_amp * truth_amp) / np.sum(pred_amp ** 2)
    candidates = {c["mode"]: c["value"] for c in prediction["scaling"]["candidates"]}
    assert candidates["least_squares"] == pytest.approx(least_squares, rel=1e-5)

    events = tensorboard_events.load(str(tmp_path))
    assert _series(events, "bias/amplitude/mean")[-1] == (1, pytest.approx(difference.mean(), rel=1e-5))
    assert _series(events, "bias/phase/mae")[-1] == (1, pytest.approx(np.abs(phase_difference).mean(), rel=1e-4))
    assert _series(events, "bias/scaling/least_squares")[-1][1] == pytest.approx(least_squares, rel=1e-5)
    assert [s for s, _ in _series(events, "bias/amplitude/mean")] == [0, 1]
    for tag in ("images/amplitude", "images/phase"):
        images = events.Tensors(tag)
        assert [e.step for e in images] == [0, 1]
        encoded = tensor_util.make_ndarray(images[-1].tensor_proto)
        assert (int(encoded[0]), int(encoded[1])) == (2 * 16 + 1, 16)  # width, height
        assert len(encoded) == 2 + 2  # max_images PNGs
        decoded = tf.io.decode_png(encoded[2]).numpy()
        assert decoded.shape == (16, 33, 1)
        # Each side is scaled to [0, 1] on its own: both reach black and white.
        for side in (decoded[:, :16, 0], decoded[:, 17:, 0]):
            assert side.min() == 0 and side.max() == 255


def test_truth_of_another_batch_size_is_refused_at_construction(small_data):
    data = small_data
    with pytest.raises(ValueError, match=r"truth has shape \(3, 16, 16, 4\).*probe_inputs holds 4"):
        StageStatistics([], probe_inputs=_probe(data), truth=data.truth_object[:PROBE - 1])


def test_truth_of_the_wrong_shape_fails_at_train_begin(make_model, small_data):
    data = small_data
    callback = StageStatistics([], probe_inputs=_probe(data), truth=data.truth_object[:PROBE, ..., :2])
    with pytest.raises(ValueError, match=r"\(4, 16, 16, 4\).*\(4, 16, 16, 2\)"):
        _fit(make_model(SEED, run_eagerly=True), data, callback)


# ------------------------------------------------------------------ non-finite values
def test_nan_in_an_array_is_counted_and_reported_not_raised(tmp_path):
    clean = np.ones((3, 4), dtype=np.float32)
    dirty = np.array([[1.0, np.nan, 3.0], [np.nan, np.inf, 5.0]], dtype=np.float32)
    empty_of_finite = np.full(3, np.nan)
    stages = [("clean", "Clean", "test", clean), ("dirty", "Dirty", "test", dirty),
              {"name": "all_nan", "array": empty_of_finite}]
    callback = StageStatistics(stages, log_dir=str(tmp_path))
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0)
    callback.on_train_end()

    dirty_stats = callback.record.stages[1]["stats"]
    assert (dirty_stats["nan_count"], dirty_stats["inf_count"], dirty_stats["count"]) == (2, 1, 6)
    assert dirty_stats["mean"] == pytest.approx(3.0)
    codes = [(f["level"], f["code"]) for f in callback.record.findings]
    assert codes == [("warning", "stage_nonfinite"), ("warning", "stage_nonfinite")]  # once per stage
    assert "'dirty'" in callback.record.findings[0]["message"]
    assert "'all_nan'" in callback.record.findings[1]["message"]

    events = tensorboard_events.load(str(tmp_path))
    assert _series(events, "stages/dirty/nan_count") == [(0, 2.0), (1, 2.0)]
    assert _series(events, "stages/dirty/mean")[0][1] == pytest.approx(3.0)
    assert _series(events, "stages/ratio/clean_to_dirty")[0][1] == pytest.approx(3.0)
    tags = _tags(events)
    # Undefined values are skipped, never written as NaN.
    assert "stages/all_nan/mean" not in tags and "stages/all_nan" not in tags
    assert "stages/all_nan/nan_count" in tags
    assert "stages/ratio/dirty_to_all_nan" not in tags
    assert "stages/invariant/chain_product" not in tags
    for tag in tags:
        for event in events.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), tag


def test_findings_print_one_line_each_unless_quiet(capsys):
    dirty = np.array([1.0, np.nan, 3.0])
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    _drive(StageStatistics([("dirty", dirty), ("also", np.array([np.inf]))]), model, epochs=2)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "StageStatistics: stage 'dirty' (dirty) holds 1 NaN and 0 infinite value(s) of 3 at train begin; its "
        "mean, std, min and max cover the 2 finite value(s) only. See TensorBoard stages/dirty/nan_count and "
        "report.md §Normalization Stage Stats.",
        "StageStatistics: stage 'also' (also) holds 0 NaN and 1 infinite value(s) of 1 at train begin; its "
        "mean, std, min and max cover the 0 finite value(s) only. See TensorBoard stages/also/nan_count and "
        "report.md §Normalization Stage Stats.",
    ]
    _drive(StageStatistics([("dirty", dirty)], verbose=0), model)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("stages, kwargs, message", [
    ([("a", np.ones(2)), {"name": "a", "array": np.ones(3)}], {}, r"'a' is registered twice"),
    ([{"name": "a"}], {}, r"stage 'a': give exactly one of .*got none"),
    ([{"name": "a", "array": np.ones(2), "layer": "enc1"}], {"probe_inputs": {"input": np.ones((1, 2))}},
     r"stage 'a': give exactly one of .*'array', 'layer'"),
    ([{"name": "a", "array": np.ones((0, 3))}], {}, r"stage 'a': the array is empty"),
    ([{"name": "a", "array": np.array(["x", "y"])}], {}, r"stage 'a': the array must be numeric"),
    ([{"name": "a", "array": np.array([object(), 1])}], {}, r"stage 'a': the array must be numeric"),
    ([{"name": "a", "fn": 3}], {}, r"stage 'a': 'fn' must be callable"),
    ([{"name": "a", "arary": np.ones(2)}], {}, r"stage 'a': unknown key\(s\) \['arary'\]"),
    ([{"name": "a b", "array": np.ones(2)}], {}, r"'name' must be"),
    ([{"name": "ratio", "array": np.ones(2)}], {}, r"reserved"),
    ([("a", "b", np.ones(2))], {}, r"stage #0: a tuple spec"),
    ([{"name": "p", "layer": "pred_amplitude"}], {}, r"probe_inputs is required to evaluate 'p'"),
    ([], {"truth": np.ones((1, 2), dtype=complex)}, r"probe_inputs is required to evaluate 'truth'"),
    ([], {"every_n_epochs": 0}, r"every_n_epochs must be an integer >= 1"),
])
def test_bad_specs_are_refused_at_construction(stages, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StageStatistics(stages, **kwargs)


def test_unknown_layer_fails_at_train_begin_naming_the_layers(make_model, small_data):
    data = small_data
    model = make_model(SEED, run_eagerly=True)
    weights = [np.array(w) for w in model.get_weights()]
    callback = StageStatistics([{"name": "prediction", "layer": "pred_amplitud"}], probe_inputs=_probe(data))
    with pytest.raises(ValueError, match=r"stage 'prediction'.*no layer named 'pred_amplitud'; did you mean 'pred_amplitude'"):
        _fit(model, data, callback)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)  # failed before any training step


# ------------------------------------------------------------------ record, config, no log_dir
def test_without_log_dir_the_record_is_filled_and_nothing_written(make_model, small_data, tmp_path, monkeypatch):
    data = small_data
    monkeypatch.chdir(tmp_path)
    callback = StageStatistics(data.stages(), probe_inputs=_probe(data), truth=data.truth_object[:PROBE])
    _fit(make_model(SEED, run_eagerly=True), data, callback, epochs=1)
    assert os.listdir(tmp_path) == []
    assert len(callback.record.stages) == 4
    assert callback.record.prediction["amplitude_bias"]["count"] == data.truth_object[:PROBE].size
    path = tmp_path / "record.json"
    callback.record.save(path)
    assert RunRecord.load(path) == callback.record


def test_the_stages_keep_their_order_kind_and_label(small_data):
    data = small_data
    callback = StageStatistics(data.stages() + [{"name": "p", "layer": "pred_amplitude"},
                                                {"name": "f", "fn": lambda m: np.ones(1)}],
                               probe_inputs=_probe(data), truth=data.truth_object[:PROBE], every_n_epochs=5)
    assert [s.name for s in callback.stages] == [s[0] for s in data.stages()] + ["p", "f"]
    assert [s.kind for s in callback.stages] == ["array"] * 4 + ["layer", "fn"]
    assert callback.stages[4].value == "pred_amplitude"
    assert callback.stages[0].label == "Raw diffraction"
    assert (callback.every_n_epochs, callback.truth.shape[0]) == (5, PROBE)
    assert callback.prediction_output == "trimmed_obj"


def _drive(callback, model, epochs=1):
    """Runs the callback's hooks around `epochs` epochs without training (cheap)."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch)
    callback.on_train_end()


def test_histograms_and_images_can_be_switched_off(make_model, small_data, tmp_path):
    data = small_data
    stages = [("container_X", data.container_X), {"name": "prediction", "layer": "pred_amplitude"}]
    callback = StageStatistics(stages, probe_inputs=_probe(data), truth=data.truth_object[:PROBE],
                               histograms=False, images=False, log_dir=str(tmp_path))
    _drive(callback, make_model(SEED, run_eagerly=True))
    tags = _tags(tensorboard_events.load(str(tmp_path)))
    assert {"stages/container_X/mean", "stages/prediction/mean", "bias/amplitude/mean"} <= tags
    assert not tags & {"stages/container_X", "stages/prediction", "images/amplitude", "images/phase"}


def test_huge_arrays_are_subsampled_for_the_histogram_only(tmp_path, monkeypatch):
    from ptycho_callbacks import stages

    monkeypatch.setattr(stages, "HISTOGRAM_MAX_VALUES", 10)
    values = np.arange(100, dtype=np.float64)
    callback = StageStatistics([("big", values)], log_dir=str(tmp_path))
    _drive(callback, keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    events = tensorboard_events.load(str(tmp_path))
    buckets = tensor_util.make_ndarray(events.Tensors("stages/big")[0].tensor_proto)
    assert buckets[:, 2].sum() == 10
    assert _series(events, "stages/big/mean")[0][1] == pytest.approx(49.5)
    assert _series(events, "stages/big/count")[0][1] == 100


def test_unknown_prediction_output_fails_at_train_begin(make_model, small_data):
    data = small_data
    callback = StageStatistics([], probe_inputs=_probe(data), truth=data.truth_object[:PROBE],
                               prediction_output="object")
    with pytest.raises(ValueError, match=r"prediction_output: .*no layer named 'object'.*available layer names"):
        _drive(callback, make_model(SEED, run_eagerly=True))
