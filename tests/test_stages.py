"""Stage specs and the prediction | truth panels: numpy only."""

import numpy as np
import pytest

from ptycho_callbacks import stages

pytestmark = pytest.mark.core


def test_specs_as_dicts_and_tuples_keep_their_order_kind_and_label():
    parsed = stages.parse_stages([("raw", "Raw", "sim", np.ones(3)), ("grouped", np.ones(2)),
                                  {"name": "prediction", "layer": "pred_amplitude"},
                                  {"name": "f", "fn": len, "label": "F"}])
    assert [(s.name, s.kind, s.label) for s in parsed] == [("raw", "array", "Raw"), ("grouped", "array", "grouped"),
                                                           ("prediction", "layer", "prediction"), ("f", "fn", "F")]


@pytest.mark.parametrize("spec, message", [
    ({"name": "a", "array": np.ones(2), "layer": "x"}, "exactly one of 'array', 'layer' or 'fn'"),
    ({"name": "a b", "array": np.ones(2)}, "'name' must be"),
    ({"name": "ratio", "array": np.ones(2)}, "reserved"),
    ({"name": "truth", "array": np.ones(2, complex)}, "complex"),
    ({"name": "a", "array": np.ones(0)}, "empty"),
    ({"name": "a", "fn": 3}, "callable"),
])
def test_a_bad_spec_is_refused_with_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        stages.parse_stages([spec])


def test_a_name_given_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        stages.parse_stages([("a", np.ones(1)), ("a", np.ones(1))])


def test_panels_put_prediction_and_truth_side_by_side_each_scaled_on_its_own():
    prediction, truth = np.arange(8.0).reshape(2, 2, 2), 10 * np.ones((2, 2, 2))
    truth[0, 0, 0] = np.nan
    images = stages.side_by_side(prediction, truth, max_images=1)
    assert images.shape == (1, 2, 5, 1)
    assert images[0, :, :2, 0].min() == 0 and images[0, :, :2, 0].max() == 1
    assert np.all(images[0, :, 2, 0] == 1), "a white gap between the panels"
    assert np.all(images[0, :, 3:, 0] == 0), "a constant truth (its NaN pixel included) shows as 0"


def test_histogram_values_subsample_huge_arrays_and_drop_non_finite(monkeypatch):
    monkeypatch.setattr(stages, "HISTOGRAM_MAX_VALUES", 10)
    values = np.arange(100.0)
    values[0] = np.nan
    kept = stages.histogram_values(values)
    assert kept.size == 9 and np.all(np.isfinite(kept))
    assert stages.histogram_values(np.array([3 + 4j]))[0] == 5
