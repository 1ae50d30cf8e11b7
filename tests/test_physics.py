"""Physics health: the pure numpy measures, their record fields and their report section."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptycho_callbacks import physics
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.render import render_report

pytestmark = pytest.mark.core


def patterns(sums, n=4):
    """(1, n, n, len(sums)) counts: pattern k is uniform with total sums[k]."""
    sums = np.asarray(sums, dtype=np.float64)
    return np.broadcast_to(sums / n ** 2, (1, n, n, sums.size)).copy()


# ------------------------------------------------------------ photon budget
def test_photon_budget_is_per_pattern_ratio_of_sums():
    counts = patterns([100.0, 200.0, 400.0, 800.0])
    factors = np.array([0.5, 1.0, 1.0, 2.0])
    pred = counts * factors  # pattern k predicts factors[k] times its measured photons
    budget = physics.photon_budget(pred, counts)
    assert budget["count"] == 4 and budget["reason"] is None
    assert budget["mean"] == pytest.approx(1.125)
    assert budget["median"] == pytest.approx(1.0)
    assert budget["p05"] == pytest.approx(0.575)  # linear interpolation between 0.5 and 1.0
    assert budget["p95"] == pytest.approx(1.85)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e3), sums=st.lists(st.floats(1.0, 1e6), min_size=1, max_size=6))
def test_photon_budget_of_a_scaled_prediction_is_the_scale(scale, sums):
    counts = patterns(sums)
    budget = physics.photon_budget(scale * counts, counts)
    for key in ("mean", "median", "p05", "p95"):
        assert budget[key] == pytest.approx(scale, rel=1e-9)


def test_photon_budget_leaves_out_unusable_patterns():
    counts = patterns([100.0, 0.0, 100.0, 100.0])
    pred = patterns([50.0, 10.0, 150.0, 100.0])
    pred[0, 0, 0, 2] = np.nan
    budget = physics.photon_budget(pred, counts)
    assert budget["count"] == 2  # pattern 1 measured nothing, pattern 2 holds NaN
    assert budget["mean"] == pytest.approx(0.75)


def test_photon_budget_undefined_cases_say_why():
    counts = patterns([100.0, 100.0])
    nan = physics.photon_budget(np.full(counts.shape, np.nan), counts)
    assert nan["mean"] is None and nan["count"] == 0 and nan["reason"] == "prediction not finite"
    dark = physics.photon_budget(counts, np.zeros(counts.shape))
    assert dark["mean"] is None and "measured sum" in dark["reason"]
    empty = physics.photon_budget(np.zeros((0, 4, 4, 1)), np.zeros((0, 4, 4, 1)))
    assert empty["mean"] is None and empty["reason"] == "no pattern"
    with pytest.raises(ValueError, match="shape"):
        physics.photon_budget(np.ones((1, 4, 4, 2)), np.ones((1, 4, 4, 1)))


# ---------------------------------------------------- the two fractions
def test_nonpositive_fraction_counts_zero_and_negative_among_finite_values():
    values = np.array([0.0, -0.0, -1e-9, 1.0, 2.0, 3.0, 4.0, np.nan, np.inf])
    result = physics.nonpositive_fraction(values)
    assert result["fraction"] == pytest.approx(3 / 7)
    assert result["count"] == 7 and result["nonfinite_count"] == 2


def test_nonpositive_fraction_without_finite_values_is_undefined():
    assert physics.nonpositive_fraction([np.nan, np.inf])["fraction"] is None
    assert physics.nonpositive_fraction([np.nan])["reason"] == "no finite predicted intensity"
    assert physics.nonpositive_fraction([])["reason"] == "no predicted intensity"


def test_saturation_fraction_for_sigmoid_and_relu_heads():
    sigmoid = physics.saturation_fraction([0.0005, 0.5, 0.9995, 0.3], *physics.ACTIVATION_RANGES["sigmoid"])
    assert sigmoid["fraction"] == pytest.approx(0.5)
    relu = physics.saturation_fraction([0.0, 0.0, 0.0, 2.0, np.nan], *physics.ACTIVATION_RANGES["relu"])
    assert relu["fraction"] == pytest.approx(0.75) and relu["count"] == 4
    assert physics.saturation_fraction([0.0, 0.002], 0.0, None, tolerance=0.01)["fraction"] == 1.0


def test_saturation_fraction_undefined_cases_say_why():
    assert physics.saturation_fraction([0.1], None, None)["reason"] == "activation range unknown"
    unbounded = physics.saturation_fraction([0.1], None, None)
    assert unbounded["fraction"] is None
    assert physics.saturation_fraction([np.nan], 0.0, 1.0)["reason"] == "no finite head output"


# -------------------------------------------------- moved before failure
def evaluation(step, budget, nonpositive, saturation, epoch=0):
    return {"epoch": epoch, "step": step,
            "photon_budget": {"mean": budget, "p05": budget, "p95": budget, "count": 4,
                              "reason": None if budget is not None else "prediction not finite"},
            "nonpositive_fraction": {"fraction": nonpositive, "count": 8, "nonfinite_count": 0,
                                     "reason": None if nonpositive is not None else "no finite predicted intensity"},
            "saturation_fraction": {"fraction": saturation, "count": 8, "low": 0.0, "high": None, "reason": None}}


EVALUATIONS = [
    evaluation(0, 1.0, 0.0, 0.10, epoch=0),
    evaluation(4, 0.9, 0.002, 0.20, epoch=1),
    evaluation(8, 0.5, 0.005, 0.30, epoch=2),
    evaluation(12, None, None, 1.0, epoch=3),  # after the failure at step 10: ignored
]


def test_moved_before_compares_first_and_last_evaluation_before_the_failure():
    moved = {entry["measure"]: entry for entry in physics.moved_before(EVALUATIONS, failure_step=10)}
    assert moved["photon_budget"]["first"] == 1.0 and moved["photon_budget"]["last"] == 0.5
    assert moved["photon_budget"]["moved"] is True  # 50% relative change > 20%
    assert moved["nonpositive_fraction"]["moved"] is False  # rose by 0.005 < 0.01
    assert moved["saturation_fraction"]["moved"] is True and moved["saturation_fraction"]["last"] == 0.3
    strict = physics.moved_before(EVALUATIONS, failure_step=10, thresholds={"nonpositive_fraction": 0.001})
    assert strict[1]["moved"] is True


def test_moved_before_needs_two_evaluations_before_the_failure():
    moved = physics.moved_before(EVALUATIONS, failure_step=4)
    assert [(e["first"], e["last"]) for e in moved] == [(1.0, 1.0), (0.0, 0.0), (0.1, 0.1)]
    for entry in moved:
        assert entry["moved"] is None and "fewer than two" in entry["reason"]
    assert all(e["last"] is None for e in physics.moved_before(EVALUATIONS, failure_step=0))


# ------------------------------------------------------- record and report
def test_record_round_trips_physics_and_forensics_and_old_records_load(tmp_path):
    record = RunRecord(scenario="run", physics=EVALUATIONS,
                       forensics={"stage": "loss", "layer": "pred_intensity", "op": "Log", "total_loss": None})
    record.save(tmp_path / "record.json")
    loaded = RunRecord.load(tmp_path / "record.json")
    assert loaded == record and loaded.physics[3]["photon_budget"]["mean"] is None
    assert loaded.forensics["op"] == "Log"
    old = RunRecord.from_dict({"schema_version": 1, "scenario": "old"})
    assert old.physics == [] and old.forensics is None


def failed_record():
    return RunRecord(scenario="nan_run", status="stopped_nan", physics=EVALUATIONS,
                     nan_events=[{"epoch": 2, "batch": 1, "step": 10, "phase": "train",
                                  "components": ["pred_intensity_loss"], "values": {"pred_intensity_loss": math.nan},
                                  "last_finite": {}, "weights_restored": False, "nonfinite_weights": []}])


def section(report, title):
    start = report.index(title)
    end = report.find("\n### ", start + 1)
    return report[start:end if end > 0 else None]


def test_report_has_physics_table_and_which_measure_moved_before_the_failure():
    text = section(render_report(failed_record(), generated_at="t"), "### Physics Health")
    rows = [line for line in text.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 4
    assert rows[2].startswith("| 2 | 8 | 0.5000 | 0.5000 | 0.5000 | 0.005000 | 0.3000 |")
    assert rows[3].endswith("| after the failure |") and "n/a (prediction not finite)" in rows[3]
    assert "nan" not in rows[3].replace("n/a (prediction not finite)", "").replace(
        "n/a (no finite predicted intensity)", "").lower()
    assert "**Early warnings before the failure** (at step 10, the failing train step)" in text
    assert "| Epochs completed | Step (train steps done) | Budget mean |" in text
    assert "(0-based; step" not in text
    assert "- Photon budget (mean Σ predicted / Σ measured): 1.000 → 0.5000: ⚠️ moved" in text
    assert ("- Fraction of predicted intensities ≤ 0: 0 → 0.005000: steady; ⚠️ above 0: the Poisson NLL's "
            "log is -Inf at those pixels") in text
    assert ("**Moved before the failure:** photon budget, amplitude-head saturation fraction" in text)


def test_report_of_a_finite_run_has_the_table_but_no_warning_verdict():
    record = RunRecord(scenario="ok", physics=EVALUATIONS[:3])
    text = section(render_report(record, generated_at="t"), "### Physics Health")
    assert "after the failure" not in text and "Early warnings" not in text
    assert "### Physics Health" not in render_report(RunRecord(scenario="none"), generated_at="t")


def test_report_with_one_evaluation_before_the_failure_gives_its_values():
    record = failed_record()
    record.physics = [evaluation(0, 0.12, 0.03, 0.7), evaluation(12, 0.12, 0.03, 0.7, epoch=1)]
    text = section(render_report(record, generated_at="t"), "### Physics Health")
    assert ("- Photon budget (mean Σ predicted / Σ measured): 0.1200, moved: n/a (fewer than two evaluations "
            "before the failure)") in text
    assert "- Fraction of predicted intensities ≤ 0: 0.03000, moved: n/a" in text and "⚠️ above 0" in text
    assert "**Moved before the failure:** n/a (not enough evaluations before the failure)" in text
