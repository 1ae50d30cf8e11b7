"""Property tests: arbitrary floats (NaN, Inf, huge, tiny, empty, constant) thrown at every
statistic and at the report renderer.

Nothing may raise, every returned number is finite or None, and the rendered
Markdown never shows `nan`/`inf` where a number (or `n/a (reason)`) belongs.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptycho_callbacks import stats
from ptycho_callbacks.record import STATUSES, RunRecord
from ptycho_callbacks.render import render_report

pytestmark = pytest.mark.core

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 5e-324, 1e-308, 1e-45, 1.4e-45, 3.4e38, -3.4e38, 1e308, -1e308,
               math.inf, -math.inf, math.nan]
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
DTYPES = [np.float16, np.float32, np.float64, np.complex64, np.complex128, np.int32]
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4)


@st.composite
def arrays(draw, shape=None, dtypes=DTYPES):
    """An array of any of `dtypes`: arbitrary values, or one constant value everywhere."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(shapes) if shape is None else shape
    if draw(st.booleans()):
        values = draw(hnp.arrays(np.float64, shape, elements=floats))
    else:
        values = np.full(shape, draw(floats))
    with np.errstate(all="ignore"):
        if dtype.kind == "c":
            imaginary = draw(hnp.arrays(np.float64, shape, elements=floats))
            return (values + 1j * imaginary).astype(dtype)
        if dtype.kind == "i":
            return np.nan_to_num(values, posinf=2 ** 31 - 1, neginf=-2 ** 31).clip(-2 ** 31, 2 ** 31 - 1).astype(dtype)
        return values.astype(dtype)


@st.composite
def array_pairs(draw):
    shape = draw(shapes)
    return draw(arrays(shape)), draw(arrays(shape))


def assert_finite_or_none(value, path="result", raw_keys=("final_raw",)):
    """Every number inside `value` is a finite float/int or None (`raw_keys` hold measured values)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in raw_keys:
                assert_finite_or_none(item, f"{path}[{key!r}]", raw_keys)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            assert_finite_or_none(item, f"{path}[{index}]", raw_keys)
    elif isinstance(value, float):
        assert math.isfinite(value), f"{path} = {value}"
    else:
        assert value is None or isinstance(value, (bool, int, str)), f"{path} has type {type(value)}"


# ------------------------------------------------------------------ statistics
@SETTINGS
@given(arrays())
def test_array_stats_counts_add_up_and_summaries_are_bounded(a):
    result = stats.array_stats(a)
    assert_finite_or_none(result)
    assert result["count"] == a.size
    assert result["finite_count"] + result["nan_count"] + result["inf_count"] == a.size
    assert result["shape"] == list(a.shape) and result["dtype"] == str(a.dtype)
    if result["finite_count"] == 0:
        assert (result["mean"], result["std"], result["min"], result["max"]) == (None,) * 4
    if result["mean"] is not None:
        slack = 1e-9 * max(abs(result["min"]), abs(result["max"]))
        assert result["min"] - slack <= result["mean"] <= result["max"] + slack
        assert result["min"] >= 0 or a.dtype.kind != "c"  # complex is summarised by |a|
    assert result["std"] is None or result["std"] >= 0
    assert_finite_or_none(stats.e_batch_intensity(a))


@SETTINGS
@given(array_pairs())
def test_prediction_statistics_never_raise_nor_return_nan(pair):
    pred, truth = pair
    scaling = stats.scaling_stats(pred, truth)
    amplitude = stats.amplitude_bias(pred, truth)
    phase = stats.phase_bias(pred, truth)
    for result in (scaling, amplitude, phase):
        assert_finite_or_none(result)
    assert scaling["count"] <= pred.size and amplitude["count"] <= pred.size
    if scaling["count"] == 0:
        assert scaling["best"] is None and scaling["reason"]
    for result in (amplitude, phase):
        if result["count"] == 0:
            assert result["reason"] and result["mean"] is None
    assert amplitude["pearson_r"] is None or -1.0 <= amplitude["pearson_r"] <= 1.0
    for key in ("mean", "median", "p05", "p95", "max_abs"):
        assert phase[key] is None or abs(phase[key]) <= math.pi + 1e-12
    flat_pred = np.abs(pred.astype(np.complex128)).ravel()
    flat_truth = np.abs(truth.astype(np.complex128)).ravel()
    assert_finite_or_none(stats.pearson_r(flat_pred, flat_truth))


@SETTINGS
@given(arrays(dtypes=[np.float32, np.float64]))
def test_wrap_phase_keeps_finite_angles_in_range(phase):
    wrapped = stats.wrap_phase(phase)
    finite = np.isfinite(phase)
    assert wrapped.shape == phase.shape
    assert np.all((wrapped[finite] > -np.pi) & (wrapped[finite] <= np.pi))
    assert not np.isfinite(wrapped[~finite]).any()


@SETTINGS
@given(st.lists(st.one_of(st.none(), floats), max_size=8), floats)
def test_stage_chain_statistics(means, tolerance):
    stages = [(f"s{i}", mean) for i, mean in enumerate(means)]
    transitions = stats.stage_ratios(stages)
    assert len(transitions) == max(len(means) - 1, 0)
    assert all(t["reason"] for t in transitions if t["ratio"] is None)
    assert_finite_or_none(transitions)
    assert_finite_or_none(stats.cumulative_products([t["ratio"] for t in transitions] + list(means)))
    check = stats.invariant_check(transitions)
    assert_finite_or_none({k: v for k, v in check.items() if k != "tolerance"})
    assert check["product"] is not None or check["reason"]
    drop = stats.largest_drop(stages)
    assert_finite_or_none(drop)
    assert drop is None or drop["ratio"] < 1
    if math.isfinite(tolerance) and tolerance >= 0:
        assert_finite_or_none(stats.invariant_check(transitions, tolerance))


@SETTINGS
@given(floats, floats, floats, floats, st.sampled_from([True, False, None]))
def test_scale_statistics(nphotons, N, e_batch, raw, trainable):
    for result in (stats.dataset_scale(nphotons, e_batch), stats.fallback_scale(nphotons, N),
                   stats.compare_scales(nphotons, N, e_batch), stats.log_scale_state(raw, e_batch, trainable, None)):
        assert_finite_or_none(result)
    comparison = stats.compare_scales(nphotons, N, e_batch)
    assert (comparison["direction"] is None) == (comparison["ratio"] is None)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["loss", "a_loss", "b_loss", "val_loss", "lr", "learning_rate"]),
                       st.lists(st.one_of(st.none(), floats), max_size=5)),
       st.dictionaries(st.sampled_from(["a_loss", "b_loss", "c_loss"]), floats))
def test_loss_composition(history, weights):
    result = stats.loss_composition(history, weights)
    assert_finite_or_none(result)
    assert [c["name"] for c in result["components"]][:len(weights)] == list(weights)


@SETTINGS
@given(st.one_of(floats, st.integers(), st.none(), st.text(max_size=3), st.booleans(),
                 st.complex_numbers(), st.builds(np.float32, floats), st.builds(np.float16, floats)))
def test_finite_or_none_accepts_anything(value):
    result = stats.finite_or_none(value)
    assert result is None or (isinstance(result, float) and math.isfinite(result))


# ------------------------------------------------------------------ rendering
NUMBER_LIKE_NONFINITE = re.compile(r"(?i)(?<![A-Za-z_])[+-]?(nan|inf(inity)?)(?![A-Za-z_])")
MEASURED_COLUMNS = {"Final Value", "Values"}
"""Table columns that show measured values, where a loss that really was NaN prints as NaN/+Inf/-Inf."""
MEASURED_TOKEN = re.compile(r"(?<![A-Za-z_])(NaN|[+-]Inf)(?![A-Za-z_])")
NA_WITH_REASON = re.compile(r"n/a \((?:[^()]|\([^()]*\))*\)")


def leaked_nonfinite(markdown):
    """(line number, text) of every nan/inf shown where a number or `n/a (reason)` belongs.

    Headings and table header rows are fixed prose ("NaN Event", "Has NaN");
    the reason of an `n/a (...)` may say "went NaN"; measured columns may show
    `NaN`, `+Inf`, `-Inf` exactly as `fmt_measured` writes them.
    """
    leaks = []
    headers = None
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.startswith("|"):
            headers = None
            if NUMBER_LIKE_NONFINITE.search(NA_WITH_REASON.sub("", line)):
                leaks.append((number, line))
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if headers is None:
            headers = cells
            continue
        if all(set(cell) <= set("-:") for cell in cells):
            continue
        for header, cell in zip(headers, cells):
            text = NA_WITH_REASON.sub("", cell)
            if header in MEASURED_COLUMNS:
                text = MEASURED_TOKEN.sub("", text)
            if NUMBER_LIKE_NONFINITE.search(text):
                leaks.append((number, f"{header}: {cell}"))
    return leaks


def test_the_leak_detector_finds_leaks_and_passes_prose():
    assert leaked_nonfinite("- Intensity scale: configured nan vs trained 1.000") != []
    assert leaked_nonfinite("* mean=-inf, median=0.000") != []
    assert leaked_nonfinite("| A | B |\n| --- | ---: |\n| x | inf |\n") == [(3, "B: inf")]
    assert leaked_nonfinite("| Final Value |\n| ---: |\n| nan |\n") != []  # fmt_measured writes NaN
    assert leaked_nonfinite("| Final Value | Has NaN |\n| ---: | --- |\n| -Inf | Yes |\n") == []
    assert leaked_nonfinite("- Total: n/a (final value NaN: training went non-finite (epoch 3))") == []
    assert leaked_nonfinite("### NaN Event\n- Training NaNs: YES (status stopped_nan)") == []


# Names are the user's words: one spelled "inf" would be flagged, and rightly so, as a number.
names = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-."),
                min_size=1, max_size=6).filter(lambda name: not NUMBER_LIKE_NONFINITE.search(name))
maybe_floats = st.one_of(st.none(), floats)
flags = st.sampled_from([True, False, None])


@st.composite
def measured_stage(draw, index):
    """A stage as StageStatistics records it: array_stats of an arbitrary array."""
    return {"name": f"s{index}_{draw(names)}", "label": draw(st.one_of(st.none(), names)),
            "source": draw(st.one_of(st.none(), names)), "stats": stats.array_stats(draw(arrays()))}


@st.composite
def sloppy_stage(draw, index):
    """A stage whose stats were written by hand (or an older tool): any float in any slot."""
    keys = ("count", "finite_count", "mean", "std", "min", "max", "nan_count", "inf_count")
    return {"name": f"s{index}", "label": draw(st.one_of(st.none(), names)),
            "stats": {**{key: draw(maybe_floats) for key in keys}, "shape": [2], "dtype": "float32"}}


@st.composite
def prediction(draw, sloppy):
    if draw(st.booleans()):
        return {}
    pred, truth = draw(array_pairs())
    result = {"scaling": stats.scaling_stats(pred, truth), "amplitude_bias": stats.amplitude_bias(pred, truth),
              "phase_bias": stats.phase_bias(pred, truth)}
    if sloppy:
        for summary in result.values():
            for key in list(summary):
                if key not in ("candidates", "baseline", "best", "reason") and draw(st.booleans()):
                    summary[key] = draw(floats)
            for candidate in summary.get("candidates", []):
                candidate["value"] = draw(maybe_floats)
    return result


@st.composite
def records(draw):
    sloppy = draw(st.booleans())
    stage = sloppy_stage if sloppy else measured_stage
    history_keys = st.sampled_from(["loss", "val_loss", "pred_intensity_loss", "intensity_scaler_inv_loss",
                                    "trimmed_obj_loss", "val_pred_intensity_loss", "lr"])
    history = draw(st.dictionaries(history_keys, st.lists(floats, max_size=4), max_size=5))
    log_scale = draw(st.one_of(
        st.just({}),
        st.fixed_dictionaries({"found": st.just(False), "how_found": names, "note": st.one_of(st.none(), names)}),
        st.fixed_dictionaries({
            "found": st.just(True), "variable_name": st.one_of(st.none(), names), "how_found": names,
            "initial": maybe_floats, "final": maybe_floats, "history": st.lists(floats, max_size=3),
            "declared_trainable": flags, "in_trainable_variables": flags, "moved": flags, "shared": flags}),
    ))
    config = draw(st.fixed_dictionaries({}, optional={
        "nphotons": floats, "N": floats, "gridsize": floats, "intensity_scale": floats,
        "intensity_scale_trainable": flags, "normalize_gain": floats, "e_batch_intensity": floats,
        "loss_weights": st.dictionaries(history_keys, floats, max_size=3),
        "canvas": st.fixed_dictionaries({"padded": floats, "required": floats, "fits": flags}),
    }))
    events = draw(st.lists(st.fixed_dictionaries({
        "epoch": maybe_floats, "batch": maybe_floats, "step": maybe_floats, "phase": st.sampled_from(["train", "val"]),
        "components": st.lists(history_keys, max_size=2),
        "values": st.dictionaries(history_keys, floats, max_size=2),
        "last_finite": st.dictionaries(history_keys, maybe_floats, max_size=2),
        "weights_restored": flags, "nonfinite_weights": st.lists(names, max_size=2)}), max_size=2))
    stage_count = draw(st.integers(0, 5))
    return RunRecord(
        scenario=draw(names), status=draw(st.sampled_from(STATUSES)), config=config, history=history,
        log_scale=log_scale, nan_events=events, stages=[draw(stage(i)) for i in range(stage_count)],
        prediction=draw(prediction(sloppy)),
        findings=[{"level": "info", "code": "note", "message": "a finding in plain words"}],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=3))
def test_report_of_arbitrary_records_shows_na_not_nan(run_records):
    text = render_report(run_records, generated_at="2026-01-01T00:00:00+00:00")
    assert text.count("## Scenario: ") == len(run_records)
    assert leaked_nonfinite(text) == []
    # What the CLI renders from the saved JSON is the same report.
    reloaded = [RunRecord.from_json(record.to_json()) for record in run_records]
    assert render_report(reloaded, generated_at="2026-01-01T00:00:00+00:00") == text
