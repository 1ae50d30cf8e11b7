"""from_ptychopinn on stand-ins shaped like PtychoPINN's params.cfg, PtychoDataContainer, grouped dict and RawData."""

import subprocess
import sys
import types

import numpy as np
import pytest

from ptycho_callbacks import stats
from ptycho_callbacks.ptychopinn import config_from_params, from_ptychopinn
from ptycho_callbacks.sim.data import ptychopinn_objects
from ptycho_callbacks.suite import Probe

pytestmark = pytest.mark.core


@pytest.fixture()
def objects(small_data):
    """Fresh PtychoPINN-shaped objects of the small simulation (tests may spoil them)."""
    return ptychopinn_objects(small_data, loss_weights=(0.5, 1.0, 2.0))


def test_the_config_is_what_params_cfg_and_the_data_say(small_data, objects):
    config = from_ptychopinn(objects.cfg, objects.container, objects.grouped, objects.raw)["config"]
    assert config.pop("loss_weights") == {"trimmed_obj_loss": 0.5, "intensity_scaler_inv_loss": 1.0,
                                          "pred_intensity_loss": 2.0}
    assert config == pytest.approx({
        "nphotons": 1e6, "N": 16, "gridsize": 2, "intensity_scale": small_data.intensity_scale,
        "intensity_scale_trainable": True, "e_batch_intensity": small_data.e_batch_intensity,
        "normalize_gain": small_data.normalize_gain, "batch_size": 16,
    }, rel=1e-6)
    # The dataset-derived scale the report shows is PtychoPINN's norm_Y_I (scale_nphotons over container X).
    assert stats.dataset_scale(config["nphotons"], config["e_batch_intensity"]) == pytest.approx(
        objects.container.norm_Y_I, rel=1e-6)
    assert "probe" not in config and "nepochs" not in config, "only what the report and HParams read"


def test_the_config_is_json_numbers_even_from_numpy_and_tensor_like_values(objects):
    class Scalar:  # a 0-d tensor: numpy reads it through __array__
        def __array__(self, dtype=None, copy=None):
            return np.asarray(988.212, dtype=np.float32)

    cfg = dict(objects.cfg, nphotons=np.float64(1e9), N=np.int64(64), intensity_scale=Scalar(),
               **{"intensity_scale.trainable": np.bool_(False)})
    config = config_from_params(cfg)
    assert type(config["nphotons"]) is float and type(config["N"]) is int and type(config["gridsize"]) is int
    assert type(config["intensity_scale"]) is float and config["intensity_scale"] == pytest.approx(988.212)
    assert config["intensity_scale_trainable"] is False
    assert config_from_params(types.SimpleNamespace(cfg=cfg)) == config, "the ptycho.params module works too"


def test_the_stages_follow_the_data_path_in_order(small_data, objects):
    stages = from_ptychopinn(objects.cfg, objects.container, objects.grouped, objects.raw,
                             prediction_layer="pred_amplitude")["stages"]
    assert [s["name"] for s in stages] == ["raw_diffraction", "grouped_diffraction", "grouped_X_full", "container_X",
                                           "prediction", "truth"]
    arrays = {s["name"]: s.get("array") for s in stages}
    np.testing.assert_array_equal(arrays["raw_diffraction"], small_data.raw_diffraction)
    np.testing.assert_array_equal(arrays["grouped_X_full"], small_data.normalized)
    np.testing.assert_array_equal(arrays["container_X"], small_data.container_X)
    assert stages[4]["layer"] == "pred_amplitude"
    assert arrays["truth"].shape == (8, 16, 16, 4), "the measured X of the probe batch"


def test_without_grouped_raw_or_prediction_layer_those_stages_are_left_out(objects):
    kwargs = from_ptychopinn(objects.cfg, objects.container, prediction_layer=None)
    assert [s["name"] for s in kwargs["stages"]] == ["container_X"]
    assert "normalize_gain" not in kwargs["config"] and "e_batch_intensity" in kwargs["config"]
    assert [s["name"] for s in from_ptychopinn(objects.cfg, objects.container)["stages"]][-2:] == [
        "prediction", "truth"]


def test_the_probe_is_what_prepare_inputs_and_prepare_outputs_make(small_data, objects):
    probe = from_ptychopinn(objects.cfg, objects.container, probe_size=4)["probe"]
    assert isinstance(probe, Probe)
    rows = slice(0, None, 4)  # 4 of the 16 groups, spread over the set
    scale = small_data.intensity_scale
    np.testing.assert_allclose(probe.inputs[0], scale * small_data.container_X[rows], rtol=1e-6)
    np.testing.assert_array_equal(probe.inputs[1], small_data.positions[rows])
    np.testing.assert_allclose(probe.counts, (scale * small_data.container_X[rows]) ** 2, rtol=1e-5)
    np.testing.assert_allclose(probe.truth, small_data.truth_object[rows], rtol=1e-5, atol=1e-6)
    assert probe.truth.dtype == np.complex64


def test_truth_fn_gets_the_probe_batch_s_patches_and_coordinates(small_data, objects):
    seen = {}

    def first_channel(Y, coords):
        seen.update(Y=Y, coords=coords)
        return Y[..., :1]

    probe = from_ptychopinn(objects.cfg, objects.container, probe_size=2, truth_fn=first_channel)["probe"]
    assert seen["Y"].shape == (2, 16, 16, 4) and seen["coords"].shape == (2, 1, 2, 4)
    assert probe.truth.shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match=r"truth_fn\(Y, coords\) returned shape \(16, 16\)"):
        from_ptychopinn(objects.cfg, objects.container, probe_size=2, truth_fn=lambda Y, coords: Y[0, ..., 0])


def test_ptychopinn_s_placeholder_truth_gives_no_truth_and_a_warning(objects):
    objects.container.Y_I = np.ones_like(objects.container.Y_I)
    objects.container.Y_phi = np.zeros_like(objects.container.Y_phi)
    with pytest.warns(UserWarning, match="placeholder"):
        probe = from_ptychopinn(objects.cfg, objects.container)["probe"]
    assert probe.truth is None and probe.counts is not None


def test_large_arrays_are_sampled_and_e_batch_still_covers_all_of_x(objects):
    class CountingArray:
        """An array that records the slices read from it, and refuses to be read whole."""

        def __init__(self, array):
            self.array, self.shape, self.reads = array, array.shape, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.array[key]

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("the whole array was read")

    big = np.tile(objects.container.X, (100, 1, 1, 1))  # 1600 groups
    X = CountingArray(big)
    container = types.SimpleNamespace(X=X, coords_nominal=np.tile(objects.container.coords_nominal, (100, 1, 1, 1)))
    kwargs = from_ptychopinn(objects.cfg, container, max_samples=50, probe_size=3)
    assert len(kwargs["stages"][0]["array"]) <= 50 and len(kwargs["probe"].inputs[0]) == 3
    assert all(isinstance(key, slice) for key in X.reads)
    assert max(len(range(*key.indices(len(big)))) for key in X.reads) <= 1024
    assert kwargs["config"]["e_batch_intensity"] == pytest.approx(stats.e_batch_intensity(big), rel=1e-9)


def test_ptychodatacontainer_s_numpy_copies_are_read_not_its_tensors(objects):
    class LazyContainer:
        """Like PtychoDataContainer: numpy in `_X_np` etc., a tensor of the whole set made on `.X`."""

        def __init__(self, source):
            for name in ("X", "Y_I", "Y_phi", "coords_nominal"):
                setattr(self, f"_{name}_np", getattr(source, name))

        def __getattr__(self, name):
            raise AssertionError(f".{name} was read: it loads the whole set as a tensor")

    kwargs = from_ptychopinn(objects.cfg, LazyContainer(objects.container))
    assert kwargs["probe"].truth is not None


def test_the_adapter_runs_without_tensorflow_or_ptychopinn():
    code = ("import sys\n"
            "from ptycho_callbacks import from_ptychopinn\n"
            "from ptycho_callbacks.sim.data import ptychopinn_objects, simulate\n"
            "o = ptychopinn_objects(simulate(N=16, gridsize=1, n_scan=3, nphotons=1e6))\n"
            "from_ptychopinn(o.cfg, o.container, o.grouped, o.raw)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', "
            "'ptycho')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


# --- bad input: every message names what is wrong ------------------------------------------------------------


def test_a_missing_params_cfg_key_is_named(objects):
    cfg = dict(objects.cfg)
    del cfg["N"], cfg["nphotons"]
    with pytest.raises(KeyError, match=r"params.cfg has no 'nphotons', 'N'"):
        from_ptychopinn(cfg, objects.container)
    cfg = dict(objects.cfg)
    del cfg["intensity_scale"]
    with pytest.raises(KeyError, match="no 'intensity_scale'.*build the callbacks after the model"):
        from_ptychopinn(cfg, objects.container)


@pytest.mark.parametrize("key, value, message", [
    ("N", 16.5, "params.cfg\\['N'\\] must be a whole number"),
    ("nphotons", "1e9", "params.cfg\\['nphotons'\\] must be a number"),
    ("nphotons", -1.0, "params.cfg\\['nphotons'\\] must be a positive finite number"),
    ("intensity_scale", float("nan"), "params.cfg\\['intensity_scale'\\] must be a positive finite number"),
    ("mae_weight", [1, 2], "params.cfg\\['mae_weight'\\] must be a number"),
])
def test_a_bad_params_cfg_value_is_named(objects, key, value, message):
    with pytest.raises(ValueError, match=message):
        from_ptychopinn(dict(objects.cfg, **{key: value}), objects.container)


def test_cfg_that_is_no_mapping_is_refused(objects):
    with pytest.raises(TypeError, match="params.cfg \\(a dict\\), got list"):
        from_ptychopinn([("N", 16)], objects.container)


def test_a_missing_container_attribute_is_named(objects):
    container = types.SimpleNamespace(**vars(objects.container))
    del container.X
    with pytest.raises(AttributeError, match="PtychoDataContainer.*no attribute 'X'"):
        from_ptychopinn(objects.cfg, container)
    container = types.SimpleNamespace(**vars(objects.container))
    del container.coords_nominal, container.coords
    with pytest.raises(AttributeError, match="has neither attribute 'coords_nominal' nor 'coords'"):
        from_ptychopinn(objects.cfg, container)
    container = types.SimpleNamespace(**vars(objects.container))
    del container.Y_phi
    with pytest.raises(AttributeError, match="has Y_I but no Y_phi"):
        from_ptychopinn(objects.cfg, container)


def test_shapes_that_do_not_fit_n_and_gridsize_say_which_and_what_was_expected(objects):
    with pytest.raises(ValueError, match=r"container.X has shape \(16, 16, 16, 4\), expected \(n, 32, 32, 4\)"):
        from_ptychopinn(dict(objects.cfg, N=32), objects.container)
    with pytest.raises(ValueError, match=r"container.X has shape \(16, 16, 16, 4\), expected \(n, 16, 16, 1\)"):
        from_ptychopinn(dict(objects.cfg, gridsize=1), objects.container)
    container = types.SimpleNamespace(**vars(objects.container))
    container.coords_nominal = container.coords_nominal[:3]
    with pytest.raises(ValueError, match=r"container.coords_nominal has shape \(3, 1, 2, 4\), expected "
                                         r"\(16, 1, 2, 4\)"):
        from_ptychopinn(objects.cfg, container)
    container = types.SimpleNamespace(**vars(objects.container))
    container.Y_I = container.Y_I[..., :1]
    with pytest.raises(ValueError, match=r"container.Y_I has shape \(16, 16, 16, 1\)"):
        from_ptychopinn(objects.cfg, container)
    container.X = container.X[:0]
    with pytest.raises(ValueError, match="container.X holds no sample"):
        from_ptychopinn(objects.cfg, container)


def test_bad_grouped_data_and_raw_data_are_named(objects):
    with pytest.raises(KeyError, match="grouped has no 'X_full'"):
        from_ptychopinn(objects.cfg, objects.container, grouped={"diffraction": objects.grouped["diffraction"]})
    with pytest.raises(TypeError, match="create_split.*pass the dict"):
        from_ptychopinn(objects.cfg, objects.container, grouped=(objects.grouped, 0.8))
    bad = dict(objects.grouped, X_full=objects.grouped["X_full"][:5])
    with pytest.raises(ValueError, match=r"grouped\['X_full'\] has shape \(5, 16, 16, 4\), expected \(16, 16, 16, 4\)"):
        from_ptychopinn(objects.cfg, objects.container, grouped=bad)
    with pytest.raises(AttributeError, match="RawData.*no attribute 'diff3d'"):
        from_ptychopinn(objects.cfg, objects.container, raw=types.SimpleNamespace(xcoords=None))
    raw = types.SimpleNamespace(diff3d=objects.raw.diff3d[..., None])
    with pytest.raises(ValueError, match=r"raw.diff3d has shape \(25, 16, 16, 1\), expected \(n, 16, 16\)"):
        from_ptychopinn(objects.cfg, objects.container, raw=raw)


@pytest.mark.parametrize("kwargs, message", [
    (dict(probe_size=0), "probe_size must be an integer >= 1"),
    (dict(max_samples=2.5), "max_samples must be an integer >= 1"),
    (dict(truth_fn="center_channels"), "truth_fn must be callable"),
])
def test_bad_arguments_are_named(objects, kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_ptychopinn(objects.cfg, objects.container, **kwargs)
