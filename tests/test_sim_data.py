import numpy as np
import pytest

from ptycho_callbacks.sim.data import simulate

pytestmark = pytest.mark.core


def test_stages_have_documented_shapes(small_data):
    d = small_data
    n_groups = (5 - 2 + 1) ** 2
    assert d.raw_diffraction.shape == (25, 16, 16)
    assert d.grouped_diffraction.shape == (n_groups, 16, 16, 4)
    assert d.normalized.shape == d.container_X.shape == (n_groups, 16, 16, 4)
    assert d.positions.shape == (n_groups, 1, 2, 4)
    assert d.truth_object.shape == (n_groups, 16, 16, 4) and d.truth_object.dtype == np.complex64
    assert [s[0] for s in d.stages()] == ["raw_diffraction", "grouped_diffraction",
                                          "grouped_X_full", "container_X"]


def test_grouping_takes_neighbouring_patterns(small_data):
    d = small_data
    # group 0 is anchored at scan (0, 0): members (0,0), (0,1), (1,0), (1,1) of a 5x5 scan
    for channel, pattern in enumerate([0, 1, 5, 6]):
        np.testing.assert_array_equal(d.grouped_diffraction[0, ..., channel], d.raw_diffraction[pattern])


def test_normalization_gain_is_what_it_says(small_data):
    d = small_data
    np.testing.assert_allclose(d.normalized, d.grouped_diffraction * d.normalize_gain, rtol=1e-6)
    per_pattern = np.sum(d.normalized.astype(np.float64) ** 2, axis=(1, 2))
    assert per_pattern.mean() == pytest.approx((16 / 2) ** 2, rel=1e-5)
    assert d.e_batch_intensity == pytest.approx(per_pattern.mean(), rel=1e-6)
    assert d.intensity_scale == pytest.approx(np.sqrt(1e6 / per_pattern.mean()), rel=1e-6)


def test_raw_counts_are_poisson_at_nphotons(small_data):
    counts = small_data.raw_diffraction.astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(1e6, rel=0.01)


def test_model_inputs_and_targets_follow_ptychopinn(small_data):
    inputs = small_data.model_inputs()
    targets = small_data.model_targets()
    s = small_data.intensity_scale
    np.testing.assert_allclose(inputs["input"], s * small_data.container_X, rtol=1e-6)
    np.testing.assert_allclose(targets["pred_intensity"], targets["intensity_scaler_inv"] ** 2, rtol=1e-6)


def test_simulation_is_seeded():
    a = simulate(N=16, gridsize=1, n_scan=3, nphotons=1e4, seed=7)
    b = simulate(N=16, gridsize=1, n_scan=3, nphotons=1e4, seed=7)
    c = simulate(N=16, gridsize=1, n_scan=3, nphotons=1e4, seed=8)
    np.testing.assert_array_equal(a.raw_diffraction, b.raw_diffraction)
    assert not np.array_equal(a.raw_diffraction, c.raw_diffraction)
    assert a.container_X.shape == (9, 16, 16, 1)


@pytest.mark.parametrize("kwargs", [dict(N=10), dict(N=16, gridsize=3, n_scan=2), dict(nphotons=0)])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        simulate(**kwargs)
