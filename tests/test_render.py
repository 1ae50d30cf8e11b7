"""Tests of the Markdown report renderer and the `ptycho-callbacks report` CLI."""

import json
import math
import re

import numpy as np
import pytest

from ptycho_callbacks import stats
from ptycho_callbacks.record import SCHEMA_VERSION, RunRecord
from ptycho_callbacks.cli import report_main
from ptycho_callbacks.render import DEFAULT_SPEC_REFS, fmt, fmt_measured, render_report

pytestmark = pytest.mark.core

SCENARIO_HEADERS = [
    "## Scenario: {name}",
    "### Loss Composition",
    "### Intensity Scale Comparison",
    "IntensityScaler State",  # a heading, or one line when no log_scale was found
    "### Training Container X Stats",
    "### Stage Means",
    "### Stage Ratios",
    "### Normalization Invariant Check",
    "**Stage Deviation Breakdown**",
    "**Primary deviation source:**",
    "### Prediction ↔ Truth Scaling",
    "### Amplitude Bias",
    "### Phase Bias",
    "### Normalization Stage Stats",
]


def assert_lines_present(text, lines):
    missing = [line for line in lines if line not in text]
    assert not missing, "\n".join(missing)


def stage(name, label, mean, source="test"):
    """A stage with hand-chosen stats (so the ratios are known exactly)."""
    return {"name": name, "label": label, "source": source,
            "stats": {"count": 8, "finite_count": 8, "mean": mean, "std": 0.5, "min": 0.0, "max": 4.0,
                      "nan_count": 0, "inf_count": 0, "shape": [2, 2, 2], "dtype": "float32"}}


def good_record():
    """A completed run. Hand-worked expectations are in the test below."""
    pred, truth = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0])
    phase_pred, phase_truth = np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4)
    return RunRecord(
        scenario="gs2_good", status="completed", base_dir="/runs/gs2_good",
        started_at="2026-01-20T23:17:45+00:00", ended_at="2026-01-20T23:27:34+00:00",
        config={"nphotons": 1e9, "N": 64, "gridsize": 2, "intensity_scale": 988.212,
                "intensity_scale_trainable": True, "normalize_gain": 0.577, "e_batch_intensity": 2995.974,
                "loss_weights": {"trimmed_obj_loss": 0.0, "intensity_scaler_inv_loss": 1.0,
                                 "pred_intensity_loss": 1.0},
                "canvas": {"padded": 822, "required": 817, "fits": True}},
        history={"loss": [10.0, 8.0], "pred_intensity_loss": [7.0, 6.0], "intensity_scaler_inv_loss": [1.5, 1.0],
                 "trimmed_obj_loss": [0.0, 0.0], "val_loss": [11.0, 9.0], "lr": [1e-3, 5e-4]},
        log_scale={"variable_name": "log_scale", "initial": math.log(988.212), "final": math.log(1000.0),
                   "history": [math.log(988.212), math.log(1000.0)], "declared_trainable": True,
                   "in_trainable_variables": True, "moved": True, "shared": True, "found": True,
                   "how_found": "attribute w of layer intensity_scaler", "note": None},
        stages=[stage("raw_diffraction", "Raw diffraction", 2.0, "RawData"),
                stage("grouped_diffraction", "Grouped diffraction", 2.0),
                stage("grouped_X_full", "Grouped X (normalized)", 1.0, "normalize_data"),
                stage("container_X", "Container X", 1.0, "PtychoDataContainer"),
                stage("prediction", "Prediction", 0.25), stage("truth", "Truth", 1.5)],
        prediction={"scaling": stats.scaling_stats(pred, truth),
                    "amplitude_bias": stats.amplitude_bias(pred, truth),
                    "phase_bias": stats.phase_bias(phase_pred, phase_truth)},
        findings=[{"level": "warning", "code": "log_scale_drift", "message": "exp(log_scale) drifted by 1.2%"}],
    )


def nan_record():
    """A run stopped by NaN: no log_scale found, prediction entirely NaN."""
    nan_prediction = np.full(4, np.nan)
    truth = np.array([2.0, 4.0, 6.0, 8.0])
    nan_stage = stage("prediction", "Prediction", None)
    nan_stage["stats"].update(mean=None, std=None, min=None, max=None, nan_count=8)
    return RunRecord(
        scenario="gs2_nan", status="stopped_nan",
        log_scale={"found": False, "how_found": None},
        config={"nphotons": 1e9, "N": 64, "intensity_scale": 988.212},
        history={"loss": [5.0, math.nan], "pred_intensity_loss": [4.0, -math.inf], "val_loss": [math.nan]},
        nan_events=[{"epoch": 1, "batch": 2, "step": 6, "phase": "train",
                     "components": ["pred_intensity_loss", "loss"],
                     "values": {"pred_intensity_loss": -math.inf, "loss": math.nan},
                     "last_finite": {"pred_intensity_loss": 4.0, "loss": 5.0},
                     "weights_restored": True, "nonfinite_weights": ["dense/kernel"]}],
        stages=[stage("raw_diffraction", "Raw diffraction", 2.0, "RawData"), nan_stage, stage("truth", "Truth", 5.0)],
        prediction={"scaling": stats.scaling_stats(nan_prediction, truth),
                    "amplitude_bias": stats.amplitude_bias(nan_prediction, truth),
                    "phase_bias": stats.phase_bias(nan_prediction, truth)},
    )


@pytest.fixture(scope="module")
def report():
    return render_report([good_record(), nan_record()], generated_at="2026-01-20T23:27:34+00:00")


def scenario_text(report, name):
    start = report.index(f"## Scenario: {name}")
    end = report.index("\n---", start)
    return report[start:end]


def test_title_and_comparison_table(report):
    assert report.startswith("# Intensity Bias Summary\n")
    assert f"**Spec Reference:** `{DEFAULT_SPEC_REFS['report']}`" in report
    assert "- Generated at: 2026-01-20T23:27:34+00:00" in report
    assert "- Scenario count: 2" in report
    # amp bias of [1,2,3,4] vs [2,4,6,8]: mean = median = -2.5; phase 0.1..0.4: mean = median = 0.25;
    # exp(log 1000) - 988.212 = 11.788; the ratio-mean scalar (2, exact) is the first with MAE 0.
    assert ("| gs2_good | -2.500 | -2.500 | 0.2500 | 0.2500 | 988.2 | 1000 | 11.79 | ratio_mean | No |"
            in report)
    nan_row = next(line for line in report.splitlines() if line.startswith("| gs2_nan |"))
    assert nan_row.count("n/a (training went NaN)") == 5  # four bias cells + best scalar
    assert "n/a (no log_scale found)" in nan_row
    assert nan_row.endswith("| Yes |")


def test_every_section_in_reference_order(report):
    for name in ("gs2_good", "gs2_nan"):
        text = scenario_text(report, name)
        positions = [text.index(header.format(name=name)) for header in SCENARIO_HEADERS]
        assert positions == sorted(positions), name
    assert report.index("## Scenario: gs2_good") < report.index("## Scenario: gs2_nan")


def test_good_scenario_key_lines(report):
    text = scenario_text(report, "gs2_good")
    expected_lines = [
        "- Base directory: `/runs/gs2_good`",
        "- Intensity scale: configured 988.2 vs trained exp(log_scale) 1000 (Δ=11.79)",
        "- normalize_data gain: 0.5770",
        "- Prediction scale: best=ratio_mean value=2.000",
        "- Training NaNs: no",
        # loss: weighted changes since epoch 1: -1, -0.5, 0 -> shares 66.7 %, 33.3 %, 0.0 %; residual 8 - 7 = 1
        "- Epochs trained: 2",
        "- Total loss (final): 8.000 (min=8.000, max=10.00)",
        "- Learning rate: last=5.000e-04 (min=5.000e-04, max=0.001000)",
        "| `pred_intensity_loss` | 7.000 | 6.000 | 1.000 | 6.000 | -1.000 | 66.67% | No |",
        "| `intensity_scaler_inv_loss` | 1.500 | 1.000 | 1.000 | 1.000 | -0.5000 | 33.33% | No |",
        "| `trimmed_obj_loss` | 0 | 0 | 0 | 0 | 0 | 0% | No |",
        f"Share of movement = {stats.MOVEMENT_DEFINITION}; from the first to the last epoch (Keras's epoch values).",
        "**Dominant loss term** (moved the loss most): `pred_intensity_loss`",
        "  - Dominance ratio vs next (`intensity_scaler_inv_loss`), of the weighted changes: 2.000×",
        "**Inactive components (≈0 or weight 0):** `trimmed_obj_loss`",
        f"  - Per `{DEFAULT_SPEC_REFS['loss']}`: `trimmed_obj_loss=0` indicates `realspace_weight=0` "
        "(TV/MAE disabled)",
        "- Residual (total − Σ weight·value: regularization, running means): 1.000",
        # intensity scale: sqrt(1e9/2995.974) = 577.738, sqrt(1e9)/32 = 988.212
        "| Dataset-derived scale | 577.7 |",
        "| Fallback scale | 988.2 |",
        "| nphotons | 1.000e+09 |",
        "| N (patch size) | 64 |",
        "| E_batch[Σ\\|Ψ\\|²] | 2996 |",
        "| Delta (dataset - fallback) | -410.5 |",
        "| Ratio (dataset / fallback) | 0.5846 |",
        "⚠️ **Dataset vs fallback scale mismatch:** ratio=0.5846 indicates that the actual mean intensity per "
        "sample (2996) differs from the assumed (N/2)² = 1024.",
        "If the dataset-derived scale differs significantly from the fallback value (988.2), this indicates "
        "the actual data statistics differ from the assumed model.",
        # scaler state: raw log(1000) = 6.908, 1000/988.212 = 1.012
        "| log_scale initial (raw) | 6.896 |",
        "| log_scale (raw) | 6.908 |",
        "| exp(log_scale) | 1000 |",
        "| trainable (declared) | True |",
        "| config intensity_scale | 988.2 |",
        "| delta (exp - cfg) | 11.79 |",
        "| ratio (exp / cfg) | 1.012 |",
        "✅ log_scale was trained: it is trainable and its value moved during training.",
        "- ⚠️ **warning** (`log_scale_drift`): exp(log_scale) drifted by 1.2%",
        "| stage | `container_X` |",
        "| shape | [2, 2, 2] |",
        "- Inference canvas: padded=822 required=817 fits_canvas=True",
        # stage ratios 1, 0.5, 1, 0.25, 6; cumulative 1, 0.5, 0.5, 0.125, 0.75
        "- **Largest drop:** Container X → Prediction (ratio=0.2500, Δ=-0.7500)",
        "| Grouped X (normalized) | 1.000 |",
        "| Grouped diffraction → Grouped X (normalized) | 0.5000 |",
        "| Container X → Prediction | 0.2500 | 0.1250 |",
        "| Prediction → Truth | 6.000 | 0.7500 |",
        "**Full chain product (raw→truth):** 0.7500",
        "**Deviation from unity:** 0.2500",
        "**Tolerance:** 0.05 (5%)",
        "**Passes tolerance:** ❌ No",
        "⚠️ **Symmetry violated:**",
        "| prediction_to_truth | 6.000 | 5.000 | gain |",
        "| container_X_to_prediction | 0.2500 | 0.7500 | loss |",
        "**Primary deviation source:** `prediction_to_truth` (ratio=6.000, deviation=5.000)",
        # scaling: every ratio is 2; least squares 60/30 = 2; baseline MAE 2.5, RMSE sqrt(7.5) = 2.739
        "| Ratio mean | 2.000 |",
        "| Ratio count | 4 |",
        "* Best scalar: ratio_mean (2.000)",
        "* MAE baseline 2.500 → 0; RMSE baseline 2.739 → 0",
        "| Least squares | 2.000 | 0 | 0 |",
        # amplitude: differences -1..-4, p05 = -3.85, p95 = -1.15
        "* mean=-2.500, median=-2.500, p05=-3.850, p95=-1.150 (over 4 pixels)",
        "* MAE=2.500, RMSE=2.739, max_abs=4.000, pearson_r=1.000",
        # phase: 0.1..0.4, p05 = 0.115, p95 = 0.385, RMSE sqrt(0.075) = 0.274
        "* mean=0.2500, median=0.2500, p05=0.1150, p95=0.3850 (over 4 pixels)",
        "* MAE=0.2500, RMSE=0.2739, max_abs=0.4000",
        "| raw_diffraction | RawData | 8 | 2.000 | 0.5000 | 0 | 4.000 | 0 | 0 |",
    ]
    assert_lines_present(text, expected_lines)
    assert "### NaN Event" not in text


def test_nan_scenario_key_lines(report):
    text = scenario_text(report, "gs2_nan")
    expected_lines = [
        "- Base directory: n/a (not recorded)",
        "- Training NaNs: YES (metrics: loss, pred_intensity_loss, val_loss)",
        "- Prediction scale: n/a (training went NaN)",
        "### NaN Event",
        "| Epoch (0-based) | Batch (0-based) | Step | Phase |",
        "Epoch and batch are indices from 0, as Keras passes them to callbacks (its progress bar counts from 1). "
        "Step counts the train steps done, the failing one included, on from the optimizer's step count when the "
        "fit began (0 for a fresh model), as on the x axis of the per-batch TensorBoard series: step 6 means 6 "
        "steps done, the last of them the failing one.",
        "| 1 | 2 | 6 | train | `pred_intensity_loss`, `loss` | `pred_intensity_loss`=-Inf, `loss`=NaN "
        "| `pred_intensity_loss`=4.000, `loss`=5.000 | True | `dense/kernel` |",
        "- Total loss (final): n/a (final value NaN: training went non-finite) (min=5.000, max=5.000)",
        "- Learning rate: n/a (not logged)",
        "| `pred_intensity_loss` | 4.000 | -Inf | n/a (unknown) | n/a | n/a (undefined) | n/a (weight unknown) | Yes |",
        "**Dominant loss term:** n/a (no component with a known weight)",
        "| Dataset-derived scale | n/a (needs nphotons and E_batch) |",
        "| E_batch[Σ\\|Ψ\\|²] | n/a (not recorded) |",
        "⚠️ **No `log_scale` variable found**",
        "the trained scale cannot be reported; configured intensity_scale 988.2, trainable n/a (not recorded). "
        "Name it: pass `options={\"IntensityScaleMonitor\": {\"log_scale_variable\": v}}` to `default_callbacks` "
        "(or `log_scale_variable=v` to `IntensityScaleMonitor`).",
        "| stage | `raw_diffraction` |",
        "| Raw diffraction → Prediction | n/a (mean of prediction undefined) |",
        "**Full chain product (raw→truth):** n/a (undefined ratio:",
        "**Passes tolerance:** ⚠️ n/a (undefined ratio:",
        "| Ratio count | 0 |",
        "* Best scalar: n/a (training went NaN)",
        "* MAE baseline n/a (no finite pixel pair)",
        "### Amplitude Bias\n* n/a (training went NaN)",
        "### Phase Bias\n* n/a (training went NaN)",
        "| prediction | test | 8 | n/a (no finite value) |",
    ]
    assert_lines_present(text, expected_lines)
    # The reference prints 0.000 for the bias of a NaN prediction; no number may appear there.
    bias = text[text.index("### Amplitude Bias"):text.index("### Normalization Stage Stats")]
    assert not re.search(r"\d\.\d{3}", bias) and not re.search(r"\d", bias.replace("Amplitude", ""))


NONFINITE_TOKEN = re.compile(r"(?i)(?<![A-Za-z_])(nan|[+-]?inf(inity)?)(?![A-Za-z_])")
MEASURED_COLUMNS = {"Final Value", "Values"}  # measured NaN/Inf may be shown there


def table_cells(markdown):
    """Yield (header, cell) for every data cell of every Markdown table."""
    headers = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            headers = None
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if headers is None:
            headers = cells
        elif not all(set(cell) <= set("-:") for cell in cells):
            yield from zip(headers, cells)


def leaked_nonfinite_cells(markdown):
    """Cells showing nan/inf as a value (an `n/a (reason)` may mention NaN in its reason)."""
    return [(h, c) for h, c in table_cells(markdown)
            if h not in MEASURED_COLUMNS and NONFINITE_TOKEN.search(re.sub(r"n/a \(.*\)", "", c))]


def test_no_nan_or_inf_in_numeric_cells(report):
    assert sum(1 for _ in table_cells(report)) > 100
    assert leaked_nonfinite_cells(report) == []


def test_leak_detector_catches_a_raw_nan():
    assert leaked_nonfinite_cells("| A | B |\n| --- | ---: |\n| x | nan |\n") == [("B", "nan")]
    assert leaked_nonfinite_cells("| A |\n| --- |\n| -Inf |\n") == [("A", "-Inf")]
    assert leaked_nonfinite_cells("| Final Value |\n| ---: |\n| NaN |\n") == []
    assert leaked_nonfinite_cells("| A |\n| --- |\n| n/a (training went NaN) |\n") == []


def test_loss_shares_of_a_negative_nll_are_of_its_movement():
    """PtychoPINN's NLL drops a constant: the total is about -3.7e6 while the MAE is about 80."""
    record = good_record()
    record.config["loss_weights"] = {"trimmed_obj_loss": 1.0, "intensity_scaler_inv_loss": 1.0,
                                     "pred_intensity_loss": 1.0}
    record.history = {"trimmed_obj_loss": [0.9, 0.4], "intensity_scaler_inv_loss": [95.0, 60.0],
                      "pred_intensity_loss": [-3.70e6, -3.7101e6], "loss": [-3.6999e6, -3.71004e6]}
    text = render_report(record, generated_at="now")
    section = text[text.index("### Loss Composition"):text.index("### Intensity Scale Comparison")]
    shares = re.findall(r"\| (-?[\d.e+-]+)% \| No \|", section)
    assert len(shares) == 3 and all(float(share) >= 0 for share in shares), shares
    assert "-0.0%" not in section
    assert "**Dominant loss term** (moved the loss most): `pred_intensity_loss`" in section
    # 10100 / 35 of the weighted changes, not 3.7101e6 / 60 of the values (which rests on the dropped constant).
    assert "of the weighted changes: 288.6×" in section
    record.history = {name: [v - 1e6 for v in values] if name in ("pred_intensity_loss", "loss") else values
                      for name, values in record.history.items()}
    shifted = render_report(record, generated_at="now")
    shifted = shifted[shifted.index("### Loss Composition"):shifted.index("### Intensity Scale Comparison")]
    assert re.findall(r"\| (-?[\d.e+-]+)% \| No \|", shifted) == shares
    assert "of the weighted changes: 288.6×" in shifted


def test_loss_shares_need_two_epochs():
    record = good_record()
    record.history = {name: values[:1] for name, values in record.history.items()}
    text = render_report(record, generated_at="now")
    assert "| `pred_intensity_loss` | 7.000 | 7.000 | 1.000 | 7.000 | n/a (undefined) | n/a (needs two epochs) | No |" \
        in text
    assert "**Dominant loss term:** n/a (needs two epochs)" in text


def test_nonfinite_stats_from_a_sloppy_callback_print_as_na():
    record = good_record()
    record.stages[0]["stats"].update(mean=math.nan, std=math.inf)
    record.config["intensity_scale"] = math.nan
    text = render_report(record, generated_at="now")
    assert leaked_nonfinite_cells(text) == []
    assert "| Raw diffraction | n/a (no finite value) |" in text
    assert "| config intensity_scale | n/a (not recorded) |" in text


def test_spec_refs_are_configurable():
    record = good_record()
    record.config["spec_refs"] = {"loss": "docs/losses.md §Weights"}
    text = render_report([record], spec_refs={"report": "docs/report.md"}, title="My Summary")
    assert text.startswith("# My Summary\n")
    assert "**Spec Reference:** `docs/report.md`" in text
    assert "**Spec Reference:** `docs/losses.md §Weights`" in text
    assert DEFAULT_SPEC_REFS["loss"] not in text


def test_specs_are_cited_under_docs_specs_by_default_and_the_folder_is_configurable():
    """PtychoPINN's main branch keeps its specifications under docs/specs/."""
    text = render_report(good_record(), generated_at="now")
    cited = re.findall(r"`([^`]*spec-ptycho-[a-z]+\.md)", text)
    assert cited and all(path.startswith("docs/specs/") for path in cited), set(cited)
    assert "**Spec Reference:** `docs/specs/spec-ptycho-workflow.md §Loss and Optimization`" in text
    for prefix in ("specs", "specs/"):
        moved = render_report(good_record(), generated_at="now", spec_prefix=prefix)
        assert {path for path in re.findall(r"`([^`]*spec-ptycho-[a-z]+\.md)", moved)} == \
            {"specs/spec-ptycho-core.md", "specs/spec-ptycho-workflow.md"}
    bare = render_report(good_record(), generated_at="now", spec_prefix="")
    assert "**Spec Reference:** `spec-ptycho-core.md §Normalization Invariants`" in bare
    # An explicit reference still wins over the folder.
    record = good_record()
    record.config["spec_refs"] = {"loss": "docs/losses.md §Weights"}
    assert "`docs/losses.md §Weights`" in render_report(record, generated_at="now", spec_prefix="specs")


def test_untrained_log_scale_is_reported():
    record = good_record()
    record.log_scale.update(in_trainable_variables=False, moved=False, final=record.log_scale["initial"])
    text = render_report(record, generated_at="now")
    assert "⚠️ **log_scale was NOT trained:** it is declared trainable but is missing from" in text
    record.log_scale.update(in_trainable_variables=True)
    assert "its value never moved" in render_report(record, generated_at="now")


def test_sections_without_data_are_one_line_saying_what_to_pass():
    """A bare record (no stages, no truth, no probe, no config) gives one line per missing part, no empty tables."""
    text = render_report(RunRecord(scenario="bare"), generated_at="now")
    scenario = scenario_text(text, "bare")
    assert [line for line in scenario.splitlines() if line.startswith("|")] == []  # no table at all
    assert [line for line in scenario.splitlines() if line.startswith("###")] == []
    expected = [
        "**Loss Composition**: n/a (no epoch ended: the losses are recorded at each epoch end)",
        "**Data-path stages** (container X stats, stage means and ratios, normalization invariant, stage stats): "
        "n/a (no data-path stages were given): pass `stages=[{\"name\": ..., \"array\" or \"layer\" or \"fn\": ...}, "
        "...]` to `default_callbacks` (README §Stages and the probe)",
        "**Prediction ↔ Truth** (scaling, amplitude bias, phase bias): n/a (no ground truth was given): pass "
        "`probe=Probe(inputs, truth=...)` to `default_callbacks` (README §Stages and the probe)",
        "**Physics Health** (photon budget, predicted intensities ≤ 0, saturation): n/a (no probe batch with measured "
        "counts was given): pass `probe=Probe(inputs, counts=...)` (the measured intensities of the probe batch) to "
        "`default_callbacks` (README §Stages and the probe)",
        "**Intensity Scale Comparison**: n/a (no nphotons, N or e_batch_intensity recorded): pass "
        "`config={\"nphotons\": ..., \"N\": ..., \"e_batch_intensity\": ...}` to `default_callbacks`",
        "**IntensityScaler State**: n/a (log_scale was not watched; configured intensity_scale n/a (not recorded), "
        "trainable n/a (not recorded)): add `IntensityScaleMonitor` (`default_callbacks` does)",
    ]
    assert_lines_present(scenario, expected)
    assert len(scenario.splitlines()) < 25
    assert leaked_nonfinite_cells(text) == []


def test_the_readme_has_the_section_the_hints_point_to():
    import os

    from ptycho_callbacks.render import HINTS

    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    sections = {match for hint in HINTS.values() for match in re.findall(r"README §([^)]+)\)", hint)}
    assert sections == {"Stages and the probe"}
    assert all(f"\n### {section}\n" in readme for section in sections)


def test_a_probe_with_truth_but_no_input_stage_collapses_only_the_container_section():
    record = good_record()
    record.stages = [s for s in record.stages if s["name"] in ("prediction", "truth")]
    text = scenario_text(render_report(record, generated_at="now"), "gs2_good")
    assert ("**Training Container X Stats**: n/a (no input stage was given, only the model's): pass the input "
            "stages too, e.g. `stages=[{\"name\": \"container_X\", \"array\": X}, ...]`") in text
    assert "### Training Container X Stats" not in text
    assert "| Prediction → Truth | 6.000 | 6.000 |" in text  # the stages that exist are still shown
    assert "### Amplitude Bias" in text
    one = good_record()
    one.stages = one.stages[:1]
    text = scenario_text(render_report(one, generated_at="now"), "gs2_good")
    assert "**Stage Ratios and Normalization Invariant**: n/a (one stage recorded: they need two)" in text
    assert "### Normalization Invariant Check" not in text


@pytest.mark.parametrize("value, spec, reason, expected", [
    (1.23456, "%.3f", None, "1.235"),
    (None, "%.3f", None, "n/a"),
    (math.nan, "%.3f", "training went NaN", "n/a (training went NaN)"),
    (math.inf, "%.1f%%", None, "n/a"),
    (True, "%.3f", None, "n/a"),
    (1e9, "%.0f", None, "1000000000"),
])
def test_fmt(value, spec, reason, expected):
    assert fmt(value, spec, reason) == expected


@pytest.mark.parametrize("value, expected", [
    (1.23456, "1.235"), (988.212, "988.2"), (2995.974, "2996"), (12345.6, "12346"), (0.577, "0.5770"),
    (0.001234, "0.001234"), (1.2e-4, "1.200e-04"), (-3.0517578125e-05, "-3.052e-05"), (1e9, "1.000e+09"),
    (-3929596.0, "-3.930e+06"), (999.99999, "1000"), (99999.7, "1.000e+05"), (0.0, "0"), (-0.0, "0"), (7, "7.000"),
])
def test_fmt_keeps_four_significant_digits_at_any_magnitude(value, expected):
    assert fmt(value) == expected
    assert fmt(value, reason="r", suffix="%") == expected + "%"
    assert fmt(None, reason="r", suffix="%") == "n/a (r)"


ZERO_LOOKING = re.compile(r"(?<![\d.e])-?0\.0+(?![\d.e])")
"""A number printed as 0.000 or -0.000 (0.001234 and 1.0e-05 do not match)."""


def test_small_nonzero_values_never_print_as_zero():
    """The reference prints a gain 0.001, a chain product 0.000 (~1e-4) and a delta -0.000."""
    record = good_record()
    record.config["normalize_gain"] = 0.0012345
    record.log_scale["final"] = math.log(988.212 - 3.5e-5)  # exp(log_scale) - cfg ~ -3.5e-5
    record.stages[4]["stats"]["mean"] = 2.5e-5  # container X -> prediction 2.5e-5; product so far 1.25e-5
    text = render_report(record, generated_at="now")
    assert ZERO_LOOKING.findall(text) == []
    assert "- normalize_data gain: 0.001234" in text or "- normalize_data gain: 0.001235" in text
    assert re.search(r"\| delta \(exp - cfg\) \| -3\.\d{3}e-05 \|", text)
    assert "| Container X → Prediction | 2.500e-05 | 1.250e-05 |" in text
    assert "| Prediction → Truth | 60000 | 0.7500 |" in text
    assert ZERO_LOOKING.findall("| 0.000 | -0.000 | 0.0% | 0.001 | 1.0e-05 | 0 |") == ["0.000", "-0.000", "0.0"]


def test_fmt_measured():
    assert [fmt_measured(v) for v in (math.nan, math.inf, -math.inf, 2.0, None)] == \
        ["NaN", "+Inf", "-Inf", "2.000", "n/a (not logged)"]


# --------------------------------------------------------------------- CLI
def write_run(directory, record):
    directory.mkdir(parents=True)
    record.save(directory / "record.json")
    return directory


def test_cli_writes_one_report_for_two_run_dirs(tmp_path, capsys):
    good = write_run(tmp_path / "runs" / "b_good", good_record())
    bad = write_run(tmp_path / "runs" / "a_nan", nan_record())
    output = tmp_path / "summary.md"
    assert report_main([str(good), str(bad), "-o", str(output)]) == 0
    text = output.read_text()
    assert "- Scenario count: 2" in text
    assert text.index("## Scenario: gs2_good") < text.index("## Scenario: gs2_nan")  # argument order
    assert capsys.readouterr().out == ""
    # A parent directory takes every sub-directory's record, sorted by directory name.
    assert report_main([str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    assert printed.index("## Scenario: gs2_nan") < printed.index("## Scenario: gs2_good")
    assert report_main([str(good / "record.json")]) == 0
    assert "- Scenario count: 1" in capsys.readouterr().out


def assert_one_error_line(capsys, fragment):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ptycho-callbacks report: error: ")
    assert fragment in lines[0]
    assert captured.out == ""


def test_cli_bad_path(tmp_path, capsys):
    assert report_main([str(tmp_path / "missing")]) == 2
    assert_one_error_line(capsys, "no such file or directory")
    assert report_main([str(tmp_path)]) == 2  # a directory without any record
    assert_one_error_line(capsys, "no record.json")


def test_cli_invalid_json(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "record.json").write_text("{\n  oops\n")
    assert report_main([str(run)]) == 2
    assert_one_error_line(capsys, "invalid JSON")


def test_cli_newer_schema(tmp_path, capsys):
    path = tmp_path / "record.json"
    data = good_record().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps({**data, "history": {}, "nan_events": [], "prediction": {}}))
    assert report_main([str(path)]) == 2
    assert_one_error_line(capsys, "newer")


def test_cli_help(capsys):
    assert report_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ptycho-callbacks report")
    assert "example" in out and "-o" in out
