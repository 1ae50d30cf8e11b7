"""Tests of ptycho_callbacks.stats against hand-worked numbers and independent computations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptycho_callbacks import stats

pytestmark = pytest.mark.core


# ------------------------------------------------------------------ array_stats
def test_array_stats_counts_all_but_summarises_finite_values():
    a = np.array([1.0, 2.0, np.nan, np.inf, -np.inf, 3.0], dtype=np.float32)
    result = stats.array_stats(a)
    assert result["count"] == 6
    assert result["finite_count"] == 3
    assert result["nan_count"] == 1
    assert result["inf_count"] == 2
    assert result["mean"] == pytest.approx(2.0)
    assert result["std"] == pytest.approx(math.sqrt(2.0 / 3.0))  # population std of 1, 2, 3
    assert (result["min"], result["max"]) == (1.0, 3.0)
    assert result["shape"] == [6]
    assert result["dtype"] == "float32"


def test_array_stats_complex_uses_modulus():
    result = stats.array_stats(np.array([[3 + 4j, 0 + 1j]]))
    assert result["mean"] == pytest.approx(3.0)  # (5 + 1) / 2
    assert result["max"] == pytest.approx(5.0)
    assert result["shape"] == [1, 2]
    assert result["dtype"] == "complex128"


@pytest.mark.parametrize("a", [[], [np.nan, np.nan], [np.inf, -np.inf]])
def test_array_stats_without_finite_values_gives_none(a):
    result = stats.array_stats(np.array(a, dtype=float))
    assert result["count"] == len(a)
    assert all(result[key] is None for key in ("mean", "std", "min", "max"))


def test_array_stats_constant():
    result = stats.array_stats(np.full((2, 3), 7.0))
    assert (result["mean"], result["std"], result["min"], result["max"]) == (7.0, 0.0, 7.0, 7.0)


# ------------------------------------------------------------- stage ratios
def test_stage_ratios_hand_worked():
    transitions = stats.stage_ratios([("a", 2.0), ("b", 1.0), ("c", 0.0), ("d", 5.0)])
    assert [t["name"] for t in transitions] == ["a_to_b", "b_to_c", "c_to_d"]
    assert [t["ratio"] for t in transitions] == [0.5, 0.0, None]
    assert transitions[2]["reason"] == "mean of c is 0"
    assert (transitions[0]["from"], transitions[0]["to"]) == ("a", "b")


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_stage_ratios_undefined_mean(bad):
    transitions = stats.stage_ratios([("a", 1.0), ("b", bad), ("c", 2.0)])
    assert [t["ratio"] for t in transitions] == [None, None]
    assert all("mean of b undefined" == t["reason"] for t in transitions)


def test_stage_ratios_single_or_no_stage():
    assert stats.stage_ratios([]) == []
    assert stats.stage_ratios([("a", 1.0)]) == []


def test_cumulative_products_reference_numbers():
    products = stats.cumulative_products([1.010, 0.577])
    assert [round(p, 3) for p in products] == [1.010, 0.583]


def test_cumulative_products_none_from_first_undefined_on():
    assert stats.cumulative_products([2.0, None, 3.0]) == [2.0, None, None]
    assert stats.cumulative_products([2.0, math.nan]) == [2.0, None]
    assert stats.cumulative_products([1e200, 1e200]) == [1e200, None]  # overflow is undefined
    assert stats.cumulative_products([]) == []


REFERENCE_STAGES = [("raw", 0.146), ("grouped", 0.147), ("normalized", 0.085), ("prediction", 0.401),
                    ("truth", 2.705)]


def test_invariant_check_failing_chain():
    transitions = stats.stage_ratios(REFERENCE_STAGES)
    check = stats.invariant_check(transitions)
    expected_product = 2.705 / 0.146  # the chain telescopes to truth / raw
    assert check["product"] == pytest.approx(expected_product)
    assert check["deviation"] == pytest.approx(abs(expected_product - 1))
    assert check["passes"] is False
    assert check["cumulative"][-1] == pytest.approx(expected_product)
    names = [b["name"] for b in check["breakdown"]]
    assert names == ["prediction_to_truth", "normalized_to_prediction", "grouped_to_normalized", "raw_to_grouped"]
    assert [b["effect"] for b in check["breakdown"]] == ["gain", "gain", "loss", "gain"]
    assert check["breakdown"][2]["deviation"] == pytest.approx(1 - 0.085 / 0.147)
    assert check["primary"]["name"] == "prediction_to_truth"


def test_invariant_check_passes_within_tolerance():
    check = stats.invariant_check(stats.stage_ratios([("a", 1.0), ("b", 1.02), ("c", 1.01)]))
    assert check["product"] == pytest.approx(1.01)
    assert check["passes"] is True
    assert stats.invariant_check(stats.stage_ratios([("a", 1.0), ("b", 1.2)]), tolerance=0.1)["passes"] is False


def test_invariant_check_undefined_and_empty():
    check = stats.invariant_check(stats.stage_ratios([("a", 1.0), ("b", 0.0), ("c", 1.0)]))
    assert check["product"] is None and check["deviation"] is None and check["passes"] is None
    assert "b_to_c" in check["reason"]
    assert [b["name"] for b in check["breakdown"]] == ["a_to_b"]
    assert check["breakdown"][0]["effect"] == "loss"
    empty = stats.invariant_check([])
    assert empty["passes"] is None and empty["primary"] is None and empty["reason"]


def test_invariant_check_effect_none_at_unity():
    check = stats.invariant_check(stats.stage_ratios([("a", 3.0), ("b", 3.0)]))
    assert check["breakdown"][0]["effect"] == "none"
    assert check["breakdown"][0]["deviation"] == 0.0


def test_largest_drop():
    drop = stats.largest_drop([("container_X", 0.085), ("prediction", 0.0), ("truth", 1.0)])
    assert drop["name"] == "container_X_to_prediction"
    assert drop["ratio"] == 0.0 and drop["delta"] == -1.0
    drop = stats.largest_drop(REFERENCE_STAGES)
    assert drop["name"] == "grouped_to_normalized"
    assert drop["delta"] == pytest.approx(0.085 / 0.147 - 1)
    assert stats.largest_drop([("a", 1.0), ("b", 2.0)]) is None  # nothing drops
    assert stats.largest_drop([("a", 1.0), ("b", None)]) is None
    assert stats.largest_drop([]) is None


# ---------------------------------------------------------- intensity scale
def test_scales_reference_numbers():
    assert round(stats.fallback_scale(1e9, 64), 3) == 988.212
    assert round(stats.dataset_scale(1e9, 2995.974), 3) == 577.738
    comparison = stats.compare_scales(1e9, 64, 2995.974)
    assert round(comparison["ratio"], 3) == 0.585
    assert round(comparison["delta"], 3) == -410.474
    assert comparison["assumed_intensity"] == 1024.0
    assert comparison["direction"] == "smaller"
    assert "overscaled" in comparison["sentence"]


def test_compare_scales_directions():
    # E_batch = (N/2)^2 makes both scales equal: sqrt(n / (N/2)^2) == sqrt(n) / (N/2).
    consistent = stats.compare_scales(1e6, 64, 1024.0)
    assert consistent["ratio"] == pytest.approx(1.0)
    assert consistent["direction"] == "consistent"
    larger = stats.compare_scales(1e6, 64, 512.0)
    assert larger["ratio"] == pytest.approx(math.sqrt(2))
    assert larger["direction"] == "larger" and "underscaled" in larger["sentence"]


@pytest.mark.parametrize("nphotons, N, e_batch", [
    (None, 64, 1.0), (1e9, 0, 1.0), (1e9, 64, 0.0), (1e9, 64, -1.0), (-1.0, 64, 1.0),
    (math.nan, 64, 1.0), (1e9, math.inf, 1.0), (1e9, 64, math.nan),
])
def test_compare_scales_undefined(nphotons, N, e_batch):
    comparison = stats.compare_scales(nphotons, N, e_batch)
    assert comparison["ratio"] is None and comparison["delta"] is None and comparison["direction"] is None
    assert comparison["reason"]


def test_e_batch_intensity_hand_worked():
    X = np.stack([np.ones((2, 2)), np.full((2, 2), 2.0)])  # per-sample sums 4 and 16
    assert stats.e_batch_intensity(X) == pytest.approx(10.0)
    assert stats.e_batch_intensity(np.array([[1 + 1j, 0j]])) == pytest.approx(2.0)  # |1+i|^2 = 2
    assert stats.e_batch_intensity(np.array([[1.0, np.nan], [3.0, 0.0]])) == pytest.approx(9.0)
    assert stats.e_batch_intensity(np.zeros((0, 4))) is None
    assert stats.e_batch_intensity(np.full((2, 2), np.nan)) is None


def test_e_batch_intensity_counts_each_channel_as_a_pattern():
    """Grouped data (n, N, N, C): like normalize_data, each channel is one pattern."""
    X = np.zeros((2, 2, 2, 2))
    X[..., 0], X[..., 1] = 1.0, 3.0  # pattern sums 4 and 36 in both samples
    assert stats.e_batch_intensity(X) == pytest.approx(20.0)


def test_dataset_scale_normalises_mean_photon_count():
    """Scaling data by the dataset-derived s makes E_batch[sum |s X|^2] equal nphotons."""
    X = np.random.default_rng(1).uniform(0, 3, size=(5, 8, 8, 4))
    s = stats.dataset_scale(1e6, stats.e_batch_intensity(X))
    assert stats.e_batch_intensity(s * X) == pytest.approx(1e6)


def test_log_scale_state():
    state = stats.log_scale_state(math.log(988.212), 988.212, True, False)
    assert state["exp"] == pytest.approx(988.212)
    assert state["delta"] == pytest.approx(0.0, abs=1e-9)
    assert state["ratio"] == pytest.approx(1.0)
    assert (state["trainable"], state["configured_trainable"]) == (True, False)
    drifted = stats.log_scale_state(math.log(500.0), 1000.0, True, True)
    assert drifted["delta"] == pytest.approx(-500.0) and drifted["ratio"] == pytest.approx(0.5)
    assert stats.log_scale_state(1.0, 0.0, None, None)["ratio"] is None
    assert stats.log_scale_state(None, 1.0, None, None)["exp"] is None
    assert stats.log_scale_state(1e6, 1.0, None, None)["exp"] is None  # exp overflows
    assert stats.log_scale_state(math.nan, 1.0, None, None)["delta"] is None


# --------------------------------------------------------- loss composition
HISTORY = {
    "loss": [10.0, 8.0],
    "pred_intensity_loss": [7.0, 6.0],
    "intensity_scaler_inv_loss": [1.5, 0.5],
    "trimmed_obj_loss": [0.0, 0.0],
    "val_loss": [11.0, 9.0],
    "learning_rate": [1e-3, 5e-4],
}
WEIGHTS = {"trimmed_obj_loss": 0.0, "intensity_scaler_inv_loss": 2.0, "pred_intensity_loss": 1.0}


def test_loss_composition_hand_worked():
    result = stats.loss_composition(HISTORY, WEIGHTS)
    assert result["epochs"] == 2
    assert result["total"]["final"] == 8.0
    assert (result["total"]["min"], result["total"]["max"]) == (8.0, 10.0)
    by_name = {c["name"]: c for c in result["components"]}
    assert list(by_name) == ["trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss"]
    assert by_name["pred_intensity_loss"]["weighted"] == 6.0
    assert by_name["intensity_scaler_inv_loss"]["weighted"] == 1.0
    # Movements w * (last - first): pred 1 * (6 - 7) = -1, inv 2 * (0.5 - 1.5) = -2, trimmed weight 0.
    assert by_name["pred_intensity_loss"]["change"] == -1.0
    assert by_name["intensity_scaler_inv_loss"]["change"] == -2.0
    assert by_name["pred_intensity_loss"]["share"] == pytest.approx(1.0 / 3.0)
    assert by_name["intensity_scaler_inv_loss"]["share"] == pytest.approx(2.0 / 3.0)
    assert by_name["trimmed_obj_loss"]["share"] == 0.0
    assert result["share_reason"] is None
    assert result["residual"] == pytest.approx(8.0 - 6.0 - 1.0 - 0.0)
    assert result["dominant"] == {"name": "intensity_scaler_inv_loss", "change": -2.0,
                                  "next": "pred_intensity_loss", "ratio_vs_next": 2.0, "ratio_reason": None}
    assert result["inactive"] == ["trimmed_obj_loss"]
    assert "realspace_weight=0" in result["hints"]["trimmed_obj_loss"]
    assert result["learning_rate"] == {"key": "learning_rate", "last": 5e-4, "min": 5e-4, "max": 1e-3}
    assert not any(c["has_nan"] for c in result["components"])


# PtychoPINN at N=64 and 1e9 photons: the Poisson NLL drops a constant, so it and the total are about
# -3.7e6, while the MAE is 50-100 and the real-space term below 1.
NEGATIVE_NLL_WEIGHTS = {"trimmed_obj_loss": 1.0, "intensity_scaler_inv_loss": 1.0, "pred_intensity_loss": 1.0}
NEGATIVE_NLL = {
    "trimmed_obj_loss": [0.9, 0.5, 0.4],
    "intensity_scaler_inv_loss": [95.0, 70.0, 60.0],
    "pred_intensity_loss": [-3.70e6, -3.71e6, -3.7101e6],
}
NEGATIVE_NLL["loss"] = [sum(NEGATIVE_NLL[name][i] for name in NEGATIVE_NLL_WEIGHTS) for i in range(3)]


def with_constant(history, constant):
    """The history as if the NLL had dropped `constant` more (the total moves with it)."""
    shifted = {name: list(values) for name, values in history.items()}
    for name in ("pred_intensity_loss", "loss"):
        shifted[name] = [value + constant for value in shifted[name]]
    return shifted


def test_shares_of_a_negative_nll_are_of_the_movement_and_ignore_its_constant():
    result = stats.loss_composition(NEGATIVE_NLL, NEGATIVE_NLL_WEIGHTS)
    shares = {c["name"]: c["share"] for c in result["components"]}
    # Movements since the first epoch: 0.4 - 0.9, 60 - 95, -3.7101e6 - -3.70e6.
    moved = 0.5 + 35.0 + 10100.0
    assert shares == pytest.approx({"trimmed_obj_loss": 0.5 / moved, "intensity_scaler_inv_loss": 35.0 / moved,
                                    "pred_intensity_loss": 10100.0 / moved})
    assert all(share >= 0 for share in shares.values())  # the positive MAE is no negative share of a negative total
    assert sum(shares.values()) == pytest.approx(1.0)
    assert result["dominant"]["name"] == "pred_intensity_loss"
    assert result["dominant"]["ratio_vs_next"] == pytest.approx(10100.0 / 35.0)
    assert [c["weighted"] for c in result["components"]] == [0.4, 60.0, -3.7101e6]  # raw weighted values kept
    for constant in (1e6, -5e7, 3.7101e6):
        shifted = stats.loss_composition(with_constant(NEGATIVE_NLL, constant), NEGATIVE_NLL_WEIGHTS)
        assert {c["name"]: c["share"] for c in shifted["components"]} == pytest.approx(shares, rel=1e-6)
        assert shifted["dominant"]["name"] == result["dominant"]["name"]
        assert shifted["dominant"]["ratio_vs_next"] == pytest.approx(result["dominant"]["ratio_vs_next"], rel=1e-6)


def test_movement_shares_per_batch_ignore_the_constant_and_stay_in_zero_one():
    first = {name: values[0] for name, values in NEGATIVE_NLL.items()}
    for step in (1, 2):
        current = {name: values[step] for name, values in NEGATIVE_NLL.items()}
        result = stats.movement_shares(first, current, NEGATIVE_NLL_WEIGHTS)
        assert all(0.0 <= share <= 1.0 for share in result["shares"].values())
        shifted = stats.movement_shares({**first, "pred_intensity_loss": first["pred_intensity_loss"] - 1e6},
                                        {**current, "pred_intensity_loss": current["pred_intensity_loss"] - 1e6},
                                        NEGATIVE_NLL_WEIGHTS)
        assert shifted["shares"] == pytest.approx(result["shares"], rel=1e-6)
        assert shifted["dominant"]["name"] == result["dominant"]["name"]


def test_movement_shares_say_why_they_are_undefined():
    same = {"a_loss": 3.0, "b_loss": -1e6}
    still = stats.movement_shares(same, same, {"a_loss": 1.0, "b_loss": 1.0})
    assert still["shares"] == {} and still["dominant"] is None and still["reason"] == "no component moved"
    broken = stats.movement_shares(same, {"a_loss": math.nan, "b_loss": 1.0}, {"a_loss": 1.0, "b_loss": 1.0})
    assert broken["shares"] == {} and "a_loss" in broken["reason"]
    # A weight-0 term does not move the loss, whatever its values.
    zero = stats.movement_shares({"a_loss": 1.0, "b_loss": math.nan}, {"a_loss": 2.0, "b_loss": 5.0},
                                 {"a_loss": 1.0, "b_loss": 0.0})
    assert zero["shares"] == {"a_loss": 1.0, "b_loss": 0.0}
    assert zero["dominant"]["ratio_vs_next"] is None and zero["dominant"]["ratio_reason"] == "the next did not move"
    assert stats.movement_shares({}, {}, {})["reason"] == "no weighted loss component"


def test_loss_composition_with_nan_training():
    history = {"loss": [5.0, math.nan], "pred_intensity_loss": [4.0, -math.inf], "lr": [1e-3, 1e-3]}
    result = stats.loss_composition(history, {"pred_intensity_loss": 1.0})
    component = result["components"][0]
    assert component["has_nan"] is True
    assert component["final"] is None and component["final_raw"] == -math.inf
    assert component["share"] is None and component["weighted"] is None
    assert "pred_intensity_loss" in component["share_reason"]
    assert math.isnan(result["total"]["final_raw"]) and result["total"]["final"] is None
    assert (result["total"]["min"], result["total"]["max"]) == (5.0, 5.0)
    assert result["residual"] is None and result["residual_reason"] == "total loss is non-finite"
    assert result["dominant"] is None and result["dominant_reason"] == "pred_intensity_loss non-finite"
    assert result["learning_rate"]["key"] == "lr"


def test_a_non_finite_component_is_not_outranked_by_a_finite_one():
    history = {"loss": [1.0, math.nan], "pred_intensity_loss": [1.0, math.nan],
               "intensity_scaler_inv_loss": [10.0, 20.0], "trimmed_obj_loss": [1.0, math.nan]}
    result = stats.loss_composition(history, {"pred_intensity_loss": 1.0, "intensity_scaler_inv_loss": 1.0,
                                              "trimmed_obj_loss": 0.0})
    assert result["dominant"] is None
    assert result["dominant_reason"] == "pred_intensity_loss non-finite"  # the weight-0 term does not count


def test_loss_composition_unknown_weight_and_zero_next():
    history = {"loss": [3.0], "a_loss": [3.0], "b_loss": [0.0], "extra_loss": [1.0], "val_a_loss": [1.0]}
    result = stats.loss_composition(history, {"a_loss": 1.0, "b_loss": 1.0})
    names = [c["name"] for c in result["components"]]
    assert names == ["a_loss", "b_loss", "extra_loss"]  # weights first, then other *_loss, no val_
    extra = result["components"][2]
    assert extra["weight"] is None and extra["share"] is None and extra["share_reason"] == "weight unknown"
    assert result["components"][0]["share"] is None and result["components"][0]["share_reason"] == "needs two epochs"
    assert result["residual"] is None
    assert result["dominant"] is None and result["dominant_reason"] == "needs two epochs"
    assert result["inactive"] == ["b_loss"]
    assert result["hints"] == {}
    assert result["learning_rate"] is None
    two = stats.loss_composition({"loss": [3.0, 2.0], "a_loss": [3.0, 2.0], "b_loss": [0.0, 0.0]},
                                 {"a_loss": 1.0, "b_loss": 1.0})
    assert two["dominant"]["name"] == "a_loss" and two["dominant"]["ratio_vs_next"] is None
    assert two["dominant"]["ratio_reason"] == "the next did not move"


def test_loss_composition_empty_and_zero_total():
    empty = stats.loss_composition({}, None)
    assert empty["epochs"] == 0 and empty["components"] == [] and empty["total"]["final"] is None
    zero = stats.loss_composition({"loss": [0.0, 0.0], "a_loss": [0.0, 0.0]}, {"a_loss": 1.0})
    assert zero["components"][0]["share"] is None and zero["share_reason"] == "no component moved"
    assert zero["residual"] == 0.0


# -------------------------------------------------------- prediction vs truth
def test_scaling_stats_hand_worked():
    pred = np.array([1.0, 2.0, 4.0, np.nan, 3.0])
    truth = np.array([2.0, 4.0, 8.0, 1.0, 0.0])  # NaN pair dropped; truth 0 excluded from ratios
    result = stats.scaling_stats(pred, truth)
    assert result["count"] == 3
    assert (result["mean"], result["median"], result["p05"], result["p95"]) == (2.0, 2.0, 2.0, 2.0)
    least_squares = (1 * 2 + 2 * 4 + 4 * 8 + 3 * 0) / (1 + 4 + 16 + 9)
    candidates = {c["mode"]: c for c in result["candidates"]}
    assert candidates["least_squares"]["value"] == pytest.approx(least_squares)
    # c = 2 is exact except on the truth-0 pixel: |2*3 - 0| = 6 over 4 comparable pixels.
    assert candidates["ratio_mean"]["mae"] == pytest.approx(6.0 / 4)
    assert candidates["ratio_mean"]["rmse"] == pytest.approx(math.sqrt(36.0 / 4))
    assert result["baseline"]["mae"] == pytest.approx((1 + 2 + 4 + 3) / 4)
    assert result["baseline"]["count"] == 4
    best_mae = min(c["mae"] for c in result["candidates"])
    assert result["best"]["mae"] == best_mae


def test_scaling_stats_matches_independent_computation():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.5, 3.0, size=(16, 16))
    pred = truth / 2.0 + rng.normal(0, 0.05, size=truth.shape)
    result = stats.scaling_stats(pred, truth)
    ratio = (truth / pred).ravel()
    assert result["mean"] == pytest.approx(ratio.mean())
    assert result["median"] == pytest.approx(np.median(ratio))
    assert result["p05"] == pytest.approx(np.quantile(ratio, 0.05))
    assert result["p95"] == pytest.approx(np.quantile(ratio, 0.95))
    least_squares = float(np.dot(pred.ravel(), truth.ravel()) / np.dot(pred.ravel(), pred.ravel()))
    candidates = {c["mode"]: c for c in result["candidates"]}
    assert candidates["least_squares"]["value"] == pytest.approx(least_squares)
    for candidate in result["candidates"]:
        residual = candidate["value"] * pred - truth
        assert candidate["mae"] == pytest.approx(np.abs(residual).mean())
        assert candidate["rmse"] == pytest.approx(np.sqrt((residual ** 2).mean()))
    assert result["best"]["value"] == pytest.approx(2.0, rel=0.05)
    assert result["best"]["mae"] < result["baseline"]["mae"]


@pytest.mark.parametrize("pred, truth, reason_part", [
    (np.zeros(4), np.ones(4), "nonzero"),
    (np.ones(4), np.zeros(4), "nonzero"),
    (np.full(4, np.nan), np.ones(4), "finite"),
    (np.array([]), np.array([]), "finite"),
])
def test_scaling_stats_without_valid_pixels(pred, truth, reason_part):
    result = stats.scaling_stats(pred, truth)
    assert result["count"] == 0
    assert reason_part in result["reason"]
    assert result["best"] is None
    assert all(result[k] is None for k in ("mean", "median", "p05", "p95"))
    assert all(c["value"] is None and c["mae"] is None for c in result["candidates"])


def test_scaling_stats_baseline_defined_for_zero_prediction():
    result = stats.scaling_stats(np.zeros(3), np.array([1.0, 2.0, 3.0]))
    assert result["baseline"]["mae"] == pytest.approx(2.0)
    assert result["baseline"]["rmse"] == pytest.approx(math.sqrt(14.0 / 3))


def test_scaling_stats_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        stats.scaling_stats(np.ones(3), np.ones(4))


def test_amplitude_bias_hand_worked():
    result = stats.amplitude_bias(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0]))
    # differences -1, -2, -3, -4; linear percentiles: p05 = -4 + 0.15, p95 = -2 + 0.85
    assert result["mean"] == pytest.approx(-2.5) and result["median"] == pytest.approx(-2.5)
    assert result["p05"] == pytest.approx(-3.85) and result["p95"] == pytest.approx(-1.15)
    assert result["mae"] == pytest.approx(2.5)
    assert result["rmse"] == pytest.approx(math.sqrt(30.0 / 4))
    assert result["max_abs"] == 4.0
    assert result["pearson_r"] == pytest.approx(1.0)
    assert result["count"] == 4


def test_amplitude_bias_pearson_matches_numpy():
    rng = np.random.default_rng(3)
    pred, truth = rng.normal(size=50), rng.normal(size=50)
    pred[0] = np.nan  # dropped pair
    result = stats.amplitude_bias(pred, truth)
    assert result["pearson_r"] == pytest.approx(np.corrcoef(pred[1:], truth[1:])[0, 1])
    assert result["count"] == 49


def test_amplitude_bias_degenerate_inputs():
    constant = stats.amplitude_bias(np.array([1.0, 2.0]), np.array([5.0, 5.0]))
    assert constant["pearson_r"] is None and constant["mean"] == pytest.approx(-3.5)
    single = stats.amplitude_bias(np.array([1.0]), np.array([2.0]))
    assert single["pearson_r"] is None and single["mae"] == 1.0
    empty = stats.amplitude_bias(np.full(3, np.nan), np.ones(3))
    assert empty["count"] == 0 and empty["reason"]
    assert all(empty[k] is None for k in ("mean", "median", "p05", "p95", "mae", "rmse", "max_abs", "pearson_r"))


def test_wrap_phase_range():
    wrapped = stats.wrap_phase(np.array([np.pi, -np.pi, 3 * np.pi, 0.0, 2 * np.pi - 0.1, -1e-20]))
    assert wrapped == pytest.approx([np.pi, np.pi, np.pi, 0.0, -0.1, -1e-20])
    assert np.all(wrapped > -np.pi) and np.all(wrapped <= np.pi)


def test_phase_bias_wraps_differences():
    result = stats.phase_bias(np.array([3.0, 0.1, 0.2]), np.array([-3.0, 0.0, 0.0]))
    differences = np.array([6.0 - 2 * np.pi, 0.1, 0.2])
    assert result["mean"] == pytest.approx(differences.mean())
    assert result["mae"] == pytest.approx(np.abs(differences).mean())
    assert result["max_abs"] == pytest.approx(2 * np.pi - 6.0)
    assert "pearson_r" not in result


def test_phase_bias_complex_inputs_use_angle():
    truth = np.exp(1j * np.array([0.5, -0.5]))
    pred = np.exp(1j * np.array([0.7, -0.3])) * 3.0  # modulus ignored
    assert stats.phase_bias(pred, truth)["mean"] == pytest.approx(0.2)


def test_phase_bias_empty():
    result = stats.phase_bias(np.array([]), np.array([]))
    assert result["count"] == 0 and result["mean"] is None and result["reason"]


# ------------------------------------------------------------ property tests
def _numbers_are_finite_or_none(value, path="result"):
    """Assert every number inside `value` is a finite float/int or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "final_raw":  # the measured last value of a loss, NaN allowed by contract
                _numbers_are_finite_or_none(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _numbers_are_finite_or_none(item, f"{path}[{index}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{path} = {value}"
    else:
        assert value is None or isinstance(value, (bool, int, str)), f"{path} has type {type(value)}"


nasty_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-308, 5e-324, 1e308, -1e308, 1.0]),
)
nasty_arrays = hnp.arrays(np.float64, st.integers(0, 12), elements=nasty_floats)


@settings(max_examples=60, deadline=None)
@given(nasty_arrays)
def test_property_array_stats_and_e_batch(a):
    _numbers_are_finite_or_none(stats.array_stats(a))
    _numbers_are_finite_or_none(stats.e_batch_intensity(a))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_prediction_statistics(data):
    n = data.draw(st.integers(0, 12))
    pred = data.draw(hnp.arrays(np.float64, n, elements=nasty_floats))
    truth = data.draw(hnp.arrays(np.float64, n, elements=nasty_floats))
    _numbers_are_finite_or_none(stats.scaling_stats(pred, truth))
    _numbers_are_finite_or_none(stats.amplitude_bias(pred, truth))
    _numbers_are_finite_or_none(stats.phase_bias(pred, truth))
    pearson = stats.amplitude_bias(pred, truth)["pearson_r"]
    assert pearson is None or -1.0 <= pearson <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), nasty_floats), max_size=8))
def test_property_stage_chain(means):
    stages = [(f"s{i}", m) for i, m in enumerate(means)]
    transitions = stats.stage_ratios(stages)
    _numbers_are_finite_or_none(transitions)
    _numbers_are_finite_or_none(stats.invariant_check(transitions))
    _numbers_are_finite_or_none(stats.largest_drop(stages))


@settings(max_examples=60, deadline=None)
@given(nasty_floats, nasty_floats, nasty_floats, nasty_floats)
def test_property_scales(nphotons, N, e_batch, raw):
    _numbers_are_finite_or_none(stats.compare_scales(nphotons, N, e_batch))
    _numbers_are_finite_or_none(stats.log_scale_state(raw, e_batch, True, None))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["loss", "a_loss", "b_loss", "lr"]),
                       st.lists(st.one_of(st.none(), nasty_floats), max_size=5)),
       st.dictionaries(st.sampled_from(["a_loss", "b_loss"]), nasty_floats))
def test_property_loss_composition(history, weights):
    _numbers_are_finite_or_none(stats.loss_composition(history, weights))


def test_split_total_explains_the_total():
    rows = {"loss": np.ma.masked_array([10.0, np.nan, 3.0]), "a_loss": np.ma.masked_array([4.0, 1.0, 1.0]),
            "b_loss": np.ma.masked_array([2.0, 1.0, 0.0], mask=[False, False, True])}
    weighted, residual = stats.split_total_rows(rows, {"a_loss": 2.0, "b_loss": 0.5})
    assert weighted["a_loss"].tolist() == [8.0, 2.0, 2.0] and weighted["b_loss"].tolist() == [1.0, 0.5, None]
    assert residual.tolist() == [pytest.approx(1.0), None, pytest.approx(1.0)]  # a NaN total has none


def test_scale_application_tells_once_from_twice_and_never():
    N, scale = 16, 1000.0
    rng = np.random.default_rng(1)
    once = rng.normal(size=(4, N, N, 1))
    once *= (N / 2) / np.sqrt(np.mean(np.sum(once ** 2, axis=(1, 2))))  # E[sum X^2] = (N/2)^2, as normalize_data
    checked = stats.scale_application(once, scale)
    assert checked["observed"] == pytest.approx((N / 2) ** 2) and checked["verdict"] is None
    assert abs(checked["off_by"]) < 1e-9
    assert stats.scale_application(once / scale, scale)["verdict"] == "divided_twice"
    assert stats.scale_application(once * scale, scale)["verdict"] == "multiplied_twice"
    assert stats.scale_application(once, 1.0)["off_by"] == 0.0
    assert stats.scale_application(np.zeros((2, N, N)), scale) is None
