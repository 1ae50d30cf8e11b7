"""Render run records as one Markdown "Intensity Bias Summary" report.

`render_report(records)` turns one or many `RunRecord`s into the report
(`ptycho-callbacks report`, in `ptycho_callbacks.cli`). It uses numpy only
(through `ptycho_callbacks.stats`).

Formatting rule: every number goes through `fmt`, which keeps 4 significant
digits at any magnitude (`significant`: fixed notation from 1e-3 to 1e5,
scientific outside; exact zero prints as `0`), so no value that is not zero
prints as `0.000`; counts print as integers (`"%d"`). A value that is
undefined (None, or non-finite where a number is meant) prints as `n/a` plus
a short reason, never as a made-up number or as "nan"/"inf". The only
exceptions are measured non-finite values (a loss that really was NaN), which
`fmt_measured` prints as `NaN`, `+Inf` or `-Inf`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Iterable, Mapping, Sequence

from ptycho_callbacks import physics, stats
from ptycho_callbacks.record import (
    CONTAINER_STAGE,
    PREDICTION_STAGE,
    TRUTH_STAGE,
    RunRecord,
)

_CORE_SPEC = "spec-ptycho-core.md §Normalization Invariants"
_WORKFLOW_SPEC = "spec-ptycho-workflow.md §Loss and Optimization"

SPEC_FILES = {
    "report": _CORE_SPEC,
    "loss": _WORKFLOW_SPEC,
    "intensity_scale": _CORE_SPEC,
    "scaler_state": _CORE_SPEC,
    "largest_drop": _CORE_SPEC,
    "stage_ratios": _CORE_SPEC,
    "invariant": _CORE_SPEC,
}
"""The PtychoPINN specification (file and section) each report section cites, without the folder."""

DEFAULT_SPEC_PREFIX = "docs/specs/"
"""The folder of PtychoPINN's specifications in its repository (main branch); `spec_prefix=` changes it."""


def spec_refs_for(prefix: str | None = None) -> dict:
    """{report section: spec reference} with the specifications under `prefix` (default `docs/specs/`).

    A prefix without a trailing "/" gets one; "" cites the bare file names.
    """
    prefix = DEFAULT_SPEC_PREFIX if prefix is None else str(prefix)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return {section: prefix + ref for section, ref in SPEC_FILES.items()}


DEFAULT_SPEC_REFS = spec_refs_for()
"""Spec-reference texts per report section; change the folder with `spec_prefix=`, any text with
`spec_refs=` or a record's `config["spec_refs"]`."""

NA = "n/a"


# ---------------------------------------------------------------- formatting
SIGNIFICANT_DIGITS = 4
"""Significant digits of every non-integer number in the report."""

FIXED_EXPONENTS = (-3, 5)
"""Numbers of magnitude 10^-3 <= |x| < 10^5 (after rounding) print in fixed notation, others in scientific."""


def significant(number: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`number` with `digits` significant digits: `0.5770`, `988.2`, `2996`, `1.234e-05`, `-3.930e+06`.

    Fixed notation for magnitudes 10^-3 <= |x| < 10^5 (`FIXED_EXPONENTS`;
    a number of 10^4 or more shows all five integer digits), scientific
    outside; exact zero (also -0.0) is `0`. A number that is not zero never
    prints as zero.
    """
    if number == 0:
        return "0"
    scientific = f"{number:.{digits - 1}e}"
    exponent = int(scientific.split("e")[1])  # after rounding: 999.99999 counts as 1.000e+03
    if FIXED_EXPONENTS[0] <= exponent < FIXED_EXPONENTS[1]:
        return f"{number:.{max(digits - 1 - exponent, 0)}f}"
    return scientific


def fmt(value: Any, spec: str | None = None, reason: str | None = None, suffix: str = "") -> str:
    """A finite number as `significant(value)` (or `spec % value`, e.g. `"%d"` for counts) plus `suffix`;
    anything else as `n/a` (plus `(reason)` if given)."""
    number = None if isinstance(value, bool) else stats.finite_or_none(value)
    if number is None:
        return NA if reason is None else f"{NA} ({reason})"
    return (significant(number) if spec is None else spec % number) + suffix


def fmt_measured(value: Any, spec: str | None = None, reason: str = "not logged") -> str:
    """Like `fmt`, but a measured non-finite value prints as `NaN`, `+Inf` or `-Inf`."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return fmt(value, spec, reason)


def fmt_flag(value: Any, reason: str = "unknown") -> str:
    """`True`/`False` for a bool, `n/a (reason)` otherwise."""
    return str(value) if isinstance(value, bool) else f"{NA} ({reason})"


def _table(headers: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """Markdown table; `align` has one char per column: `l` (left) or `r` (right)."""
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _spec_line(ref: str) -> list[str]:
    return [f"**Spec Reference:** `{ref}`", ""]


def _code_list(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


_README_STAGES = "README §Stages and the probe"

HINTS = {
    "stages": "pass `stages=[{\"name\": ..., \"array\" or \"layer\" or \"fn\": ...}, ...]` to `default_callbacks` "
              f"({_README_STAGES})",
    "input_stage": "pass the input stages too, e.g. `stages=[{\"name\": \"container_X\", \"array\": X}, ...]` to "
                   f"`default_callbacks` ({_README_STAGES})",
    "truth": f"pass `probe=Probe(inputs, truth=...)` to `default_callbacks` ({_README_STAGES})",
    "counts": "pass `probe=Probe(inputs, counts=...)` (the measured intensities of the probe batch) to "
              f"`default_callbacks` ({_README_STAGES})",
    "scale_config": "pass `config={\"nphotons\": ..., \"N\": ..., \"e_batch_intensity\": ...}` to "
                    "`default_callbacks` (PtychoPINN: from `params.cfg` and `calculate_intensity_scale`)",
    "log_scale": "name it: pass `options={\"IntensityScaleMonitor\": {\"log_scale_variable\": v}}` to "
                 "`default_callbacks` (or `log_scale_variable=v` to `IntensityScaleMonitor`)",
}
"""What to pass to get a report section that had no data, by what was missing."""


def _missing(title: str, what: str, hint: str | None, covers: str | None = None) -> list[str]:
    """A section without data, as one line: what is missing and what to pass to get it."""
    covered = f" ({covers})" if covers else ""
    return [f"**{title}**{covered}: {NA} ({what})" + (f": {hint}" if hint else ""), ""]


# ------------------------------------------------------------- record views
def _nan_metrics(record: RunRecord) -> list[str]:
    """Logged metrics with a non-finite value, plus components of NaN events."""
    names = {key for key, values in record.history.items()
             if any(stats.finite_or_none(v) is None for v in values)}
    names.update(c for event in record.nan_events for c in event.get("components", []))
    return sorted(names)


def _training_went_nan(record: RunRecord) -> bool:
    return bool(_nan_metrics(record)) or bool(record.nan_events) or record.status == "stopped_nan"


def _scale_summary(record: RunRecord) -> dict:
    """Configured scale, trained exp(final log_scale) and their difference, with reasons."""
    configured = record.config.get("intensity_scale")
    state = stats.log_scale_state(record.log_scale.get("final"), configured, None, None)
    if not record.log_scale.get("found"):
        trained_reason = "no log_scale found"
    else:
        trained_reason = None if state["exp"] is not None else "log_scale not finite"
    delta_reason = trained_reason or (None if state["configured_scale"] is not None else "no configured scale")
    return {
        "configured": fmt(configured, reason="not recorded"),
        "trained": fmt(state["exp"] if trained_reason is None else None, reason=trained_reason),
        "delta": fmt(state["delta"] if delta_reason is None else None, reason=delta_reason),
    }


def _prediction_summary(record: RunRecord, key: str) -> tuple[dict, str | None]:
    """(summary dict, reason it has no numbers) for `scaling`/`amplitude_bias`/`phase_bias`."""
    if not record.prediction:
        return {}, "no ground truth given"
    summary = record.prediction.get(key) or {}
    if not summary:
        return {}, "not computed"
    if summary.get("count"):
        return summary, None
    if _training_went_nan(record):
        return summary, "training went NaN"
    return summary, summary.get("reason") or "no valid pixels"


def _stage_label(stage: Mapping) -> str:
    return stage.get("label") or stage.get("name", "?")


def _stage_means(record: RunRecord) -> list[tuple[str, float | None]]:
    return [(s.get("name", "?"), (s.get("stats") or {}).get("mean")) for s in record.stages]


def _transition_label(record: RunRecord, transition: Mapping) -> str:
    labels = {s.get("name"): _stage_label(s) for s in record.stages}
    return f"{labels.get(transition['from'], transition['from'])} → {labels.get(transition['to'], transition['to'])}"


def _container_stage(record: RunRecord) -> dict | None:
    """The `container_X` stage, else the last stage before prediction/truth."""
    inputs = [s for s in record.stages if s.get("name") not in (PREDICTION_STAGE, TRUTH_STAGE)]
    named = [s for s in inputs if s.get("name") == CONTAINER_STAGE]
    return (named or inputs or [None])[-1]


# ------------------------------------------------------------------ sections
def _comparison_table(records: Sequence[RunRecord]) -> list[str]:
    headers = ["Scenario", "Amp bias mean", "Amp median", "Phase bias mean", "Phase median",
               "Configured scale", "Trained exp(log_scale)", "Δscale", "Best scalar", "Training NaN"]
    rows = []
    for record in records:
        amp, amp_reason = _prediction_summary(record, "amplitude_bias")
        phase, phase_reason = _prediction_summary(record, "phase_bias")
        scaling, scaling_reason = _prediction_summary(record, "scaling")
        scale = _scale_summary(record)
        best = (scaling.get("best") or {}).get("mode") if scaling else None
        rows.append([
            record.scenario,
            fmt(amp.get("mean"), reason=amp_reason), fmt(amp.get("median"), reason=amp_reason),
            fmt(phase.get("mean"), reason=phase_reason), fmt(phase.get("median"), reason=phase_reason),
            scale["configured"], scale["trained"], scale["delta"],
            best or f"{NA} ({scaling_reason or 'no candidate'})",
            "Yes" if _training_went_nan(record) else "No",
        ])
    return _table(headers, "lrrrrrrrll", rows)


def _scenario_header(record: RunRecord) -> list[str]:
    scale = _scale_summary(record)
    scaling, scaling_reason = _prediction_summary(record, "scaling")
    best = scaling.get("best") if scaling else None
    if best:
        prediction_scale = f"best={best['mode']} value={fmt(best['value'])}"
    else:
        prediction_scale = f"{NA} ({scaling_reason or 'no candidate scalar'})"
    nan_metrics = _nan_metrics(record)
    if nan_metrics:
        nan_line = f"YES (metrics: {', '.join(nan_metrics)})"
    else:
        nan_line = "YES (status stopped_nan)" if _training_went_nan(record) else "no"
    base_dir = f"`{record.base_dir}`" if record.base_dir else f"{NA} (not recorded)"
    ended = f"ended {record.ended_at}" if record.ended_at else "not ended"
    return [
        f"## Scenario: {record.scenario}",
        f"- Status: {record.status} (started {record.started_at}, {ended})",
        f"- Base directory: {base_dir}",
        f"- Intensity scale: configured {scale['configured']} vs trained "
        f"exp(log_scale) {scale['trained']} (Δ={scale['delta']})",
        f"- normalize_data gain: {fmt(record.config.get('normalize_gain'), reason='not recorded')}",
        f"- Prediction scale: {prediction_scale}",
        f"- Training NaNs: {nan_line}",
        "",
    ]


STEP_WORDING = (
    "Epoch and batch are indices from 0, as Keras passes them to callbacks (its progress bar counts from 1). "
    "Step counts the train steps done, the failing one included, on from the optimizer's step count when the "
    "fit began (0 for a fresh model), as on the x axis of the per-batch TensorBoard series"
)
"""What the numbers of a NaN event count (`nan/events.py` keeps them so), said once under its table."""


def _nan_event_section(record: RunRecord) -> list[str]:
    if not record.nan_events:
        return []

    def pairs(mapping: Mapping | None, measured: bool) -> str:
        show = fmt_measured if measured else (lambda v: fmt(v, reason="none logged"))
        return ", ".join(f"`{k}`={show(v)}" for k, v in (mapping or {}).items()) or NA

    rows = [[
        fmt(e.get("epoch"), "%d"), fmt(e.get("batch"), "%d"), fmt(e.get("step"), "%d"),
        str(e.get("phase", NA)), _code_list(e.get("components", [])) or NA,
        pairs(e.get("values"), measured=True), pairs(e.get("last_finite"), measured=False),
        fmt_flag(e.get("weights_restored")), _code_list(e.get("nonfinite_weights", [])) or "none",
    ] for e in record.nan_events]
    headers = ["Epoch (0-based)", "Batch (0-based)", "Step", "Phase", "First non-finite", "Values",
               "Last finite values", "Weights restored", "Non-finite weights"]
    step = record.nan_events[0].get("step")
    example = f": step {step} means {step} steps done, the last of them the failing one" if isinstance(step, int) else ""
    return ["### NaN Event", "", *_table(headers, "rrrllllll", rows), "", STEP_WORDING + example + ".", ""]


def _findings_section(findings: Sequence[Mapping]) -> list[str]:
    return [f"- {'⚠️' if f.get('level') == 'warning' else 'ℹ️'} **{f.get('level', 'info')}** "
            f"(`{f.get('code', '?')}`): {f.get('message', '')}" for f in findings]


def _other_findings(record: RunRecord) -> list[str]:
    others = [f for f in record.findings if not str(f.get("code", "")).startswith("log_scale")]
    return ["### Findings", "", *_findings_section(others), ""] if others else []


def _loss_section(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    composition = stats.loss_composition(record.history, record.config.get("loss_weights"))
    if composition["total"]["final_raw"] is None and not composition["components"]:
        return _missing("Loss Composition", "no epoch ended: the losses are recorded at each epoch end", None)
    total = composition["total"]
    if total["final_raw"] is None:
        total_final = f"{NA} (no `loss` logged)"
    elif total["final"] is None:
        total_final = f"{NA} (final value {fmt_measured(total['final_raw'])}: training went non-finite)"
    else:
        total_final = fmt(total["final"])
    lr = composition["learning_rate"]
    lr_line = (f"last={fmt(lr['last'])} (min={fmt(lr['min'])}, max={fmt(lr['max'])})"
               if lr else f"{NA} (not logged)")
    lines = [
        "### Loss Composition", "", *_spec_line(refs["loss"]),
        f"- Epochs trained: {composition['epochs']}",
        f"- Total loss (final): {total_final} (min={fmt(total['min'], reason='no finite value')}, "
        f"max={fmt(total['max'], reason='no finite value')})",
        f"- Learning rate: {lr_line}",
        "",
    ]
    rows = []
    for c in composition["components"]:
        share = fmt(100.0 * c["share"], suffix="%") if c["share"] is not None else f"{NA} ({c['share_reason']})"
        rows.append([f"`{c['name']}`", fmt(c["first"], reason="not finite"), fmt_measured(c["final_raw"]),
                     fmt(c["weight"], reason="unknown"), fmt(c["weighted"]),
                     fmt(c["change"], reason="undefined"), share, "Yes" if c["has_nan"] else "No"])
    if rows:
        lines += _table(["Loss Component", "First Value", "Final Value", "Weight", "Weighted", "Change (w·Δ)",
                         "Share of movement", "Has NaN"], "lrrrrrrl", rows)
        lines += ["", f"Share of movement = {stats.MOVEMENT_DEFINITION}; from the first to the last epoch "
                      "(Keras's epoch values).", ""]
    else:
        lines += [f"- Loss components: {NA} (no `*_loss` history logged)", ""]
    dominant = composition["dominant"]
    if dominant:
        lines.append(f"**Dominant loss term** (moved the loss most): `{dominant['name']}`")
        if dominant["next"]:
            lines.append(f"  - Dominance ratio vs next (`{dominant['next']}`), of the weighted changes: "
                         f"{fmt(dominant['ratio_vs_next'], reason=dominant['ratio_reason'], suffix='×')}")
    else:
        lines.append(f"**Dominant loss term:** {NA} ({composition['dominant_reason']})")
    if composition["inactive"]:
        lines.append(f"**Inactive components (≈0 or weight 0):** {_code_list(composition['inactive'])}")
        lines += [f"  - Per `{refs['loss']}`: {hint}" for hint in composition["hints"].values()]
    lines.append(f"- Residual (total − Σ weight·value: regularization, running means): "
                 f"{fmt(composition['residual'], reason=composition['residual_reason'])}")
    return lines + [""]


def _intensity_scale_section(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    config = record.config
    if all(config.get(key) is None for key in ("nphotons", "N", "e_batch_intensity")):
        return _missing("Intensity Scale Comparison", "no nphotons, N or e_batch_intensity recorded",
                        HINTS["scale_config"])
    comparison = stats.compare_scales(config.get("nphotons"), config.get("N"), config.get("e_batch_intensity"))
    lines = [
        "### Intensity Scale Comparison", "", *_spec_line(refs["intensity_scale"]),
        "Per the spec, two compliant intensity scale calculation modes are allowed:",
        "1. **Dataset-derived (preferred):** `s = sqrt(nphotons / E_batch[Σ_xy |Ψ|²])`",
        "2. **Closed-form fallback:** `s ≈ sqrt(nphotons) / (N/2)`",
        "",
        f"If the dataset-derived scale differs significantly from the fallback value "
        f"({fmt(comparison['fallback'], reason='needs nphotons and N')}), this indicates the actual "
        "data statistics differ from the assumed model.",
        "",
    ]
    rows = [
        ["Dataset-derived scale", fmt(comparison["dataset"], reason="needs nphotons and E_batch")],
        ["Fallback scale", fmt(comparison["fallback"], reason="needs nphotons and N")],
        ["nphotons", fmt(config.get("nphotons"), reason="not recorded")],
        ["N (patch size)", fmt(config.get("N"), "%d", "not recorded")],
        ["E_batch[Σ\\|Ψ\\|²]", fmt(config.get("e_batch_intensity"), reason="not recorded")],
        ["Delta (dataset - fallback)", fmt(comparison["delta"], reason="undefined")],
        ["Ratio (dataset / fallback)", fmt(comparison["ratio"], reason="undefined")],
    ]
    lines += _table(["Property", "Value"], "lr", rows) + [""]
    direction = comparison["direction"]
    if direction in ("smaller", "larger"):
        lines += [
            f"⚠️ **Dataset vs fallback scale mismatch:** ratio={fmt(comparison['ratio'])} indicates that "
            f"the actual mean intensity per sample ({fmt(config.get('e_batch_intensity'))}) differs from "
            f"the assumed (N/2)² = {fmt(comparison['assumed_intensity'])}.",
            f"   - {comparison['sentence']}",
        ]
    elif direction == "consistent":
        lines.append(f"✅ {comparison['sentence']}")
    else:
        lines.append(f"Scale comparison: {NA} ({comparison['reason']})")
    return lines + [""]


def _log_scale_verdict(log_scale: Mapping) -> str:
    """Whether log_scale was really trained, from the monitor's observations."""
    declared, tracked, moved = (log_scale.get(k) for k in ("declared_trainable", "in_trainable_variables", "moved"))
    if declared is True and tracked is False:
        return ("⚠️ **log_scale was NOT trained:** it is declared trainable but is missing from "
                "`model.trainable_variables` (Keras 3 does not track a plain tf.Variable attribute), "
                "so the optimizer never updated it.")
    if declared is True and moved is False:
        return "⚠️ **log_scale was NOT trained:** it is declared trainable but its value never moved."
    if declared is True and moved is True:
        return "✅ log_scale was trained: it is trainable and its value moved during training."
    if declared is False and moved is True:
        return "⚠️ **log_scale changed although it is not trainable.**"
    if declared is False:
        return "ℹ️ log_scale is not trainable: the scale stays at its configured value."
    return f"Was log_scale trained: {NA} (trainability or movement not observed)"


def _scaler_state_section(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    log_scale = record.log_scale
    config = record.config
    found = bool(log_scale.get("found"))
    state = stats.log_scale_state(log_scale.get("final"), config.get("intensity_scale"),
                                  log_scale.get("declared_trainable"), config.get("intensity_scale_trainable"))
    findings = _findings_section([f for f in record.findings if str(f.get("code", "")).startswith("log_scale")])
    note = [f"- Note: {log_scale['note']}"] if log_scale.get("note") else []
    configured = (f"configured intensity_scale {fmt(state['configured_scale'], reason='not recorded')}, "
                  f"trainable {fmt_flag(state['configured_trainable'], 'not recorded')}")
    if "found" not in log_scale:  # no IntensityScaleMonitor watched this run
        return [f"**IntensityScaler State**: {NA} (log_scale was not watched; {configured}): add "
                "`IntensityScaleMonitor` (`default_callbacks` does)", *note, *findings, ""]
    if not found:
        how = f" ({log_scale['how_found']})" if log_scale.get("how_found") else ""
        return [f"**IntensityScaler State:** ⚠️ **No `log_scale` variable found**{how}: the trained scale cannot "
                f"be reported; {configured}. {HINTS['log_scale'][0].upper()}{HINTS['log_scale'][1:]}.",
                *note, *findings, ""]
    lines = [
        "### IntensityScaler State", "", *_spec_line(refs["scaler_state"]),
        "Per the architecture, `IntensityScaler` and `IntensityScaler_inv` layers use a shared "
        "`log_scale` tf.Variable. The effective scaling factor is `exp(log_scale)`. If this diverges "
        "from the configured `intensity_scale`, it may indicate double-scaling or a training-time drift "
        "that contributes to amplitude bias.",
        "",
    ]
    name = log_scale.get("variable_name")
    rows = [
        ["variable", f"`{name}`" if name else f"{NA} (unnamed)"],
        ["log_scale initial (raw)", fmt(log_scale.get("initial"), reason="not recorded")],
        ["log_scale (raw)", fmt(state["raw"], reason="not recorded")],
        ["exp(log_scale)", fmt(state["exp"], reason="not recorded")],
        ["trainable (declared)", fmt_flag(state["trainable"], "unknown")],
        ["in model.trainable_variables", fmt_flag(log_scale.get("in_trainable_variables"), "unknown")],
        ["moved during training", fmt_flag(log_scale.get("moved"), "unknown")],
        ["shared by both scaler layers", fmt_flag(log_scale.get("shared"), "unknown")],
        ["config intensity_scale", fmt(state["configured_scale"], reason="not recorded")],
        ["config trainable", fmt_flag(state["configured_trainable"], "not recorded")],
        ["delta (exp - cfg)", fmt(state["delta"], reason="undefined")],
        ["ratio (exp / cfg)", fmt(state["ratio"], reason="undefined")],
    ]
    lines += _table(["Property", "Value"], "lr", rows) + [""]
    lines.append(f"- Found via: {log_scale.get('how_found') or NA}")
    lines.append(_log_scale_verdict(log_scale))
    return lines + note + findings + [""]


def _canvas_line(record: RunRecord) -> list[str]:
    canvas = record.config.get("canvas")
    if not canvas:
        return []
    return [f"- Inference canvas: padded={fmt(canvas.get('padded'), '%d', 'not recorded')} "
            f"required={fmt(canvas.get('required'), '%d', 'not recorded')} "
            f"fits_canvas={fmt_flag(canvas.get('fits'), 'not recorded')}"]


def _container_section(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    stage = _container_stage(record)
    if stage is None:
        lines = _missing("Training Container X Stats", "no input stage was given, only the model's",
                         HINTS["input_stage"])[:-1]
    else:
        lines = ["### Training Container X Stats", ""]
        s = stage.get("stats") or {}
        reason = "no finite value"
        rows = [
            ["stage", f"`{stage.get('name', '?')}`"],
            ["shape", str(s.get("shape", NA))],
            ["dtype", str(s.get("dtype", NA))],
            ["count", fmt(s.get("count"), "%d", "not recorded")],
            ["min", fmt(s.get("min"), reason=reason)],
            ["max", fmt(s.get("max"), reason=reason)],
            ["mean", fmt(s.get("mean"), reason=reason)],
            ["std", fmt(s.get("std"), reason=reason)],
            ["nan_count", fmt(s.get("nan_count"), "%d", "not recorded")],
            ["inf_count", fmt(s.get("inf_count"), "%d", "not recorded")],
        ]
        lines += _table(["Metric", "Value"], "lr", rows) + [""]
    lines += _canvas_line(record)
    means = _stage_means(record)
    drop = stats.largest_drop(means)
    if drop:
        lines += [f"- **Largest drop:** {_transition_label(record, drop)} "
                  f"(ratio={fmt(drop['ratio'])}, Δ={fmt(drop['delta'])})",
                  f"  - Per `{refs['largest_drop']}`: symmetry SHALL hold for X_scaled = s · X"]
    elif len(means) < 2:
        lines.append(f"- **Largest drop:** {NA} (fewer than two stages recorded)")
    else:
        undefined = [t["name"] for t in stats.stage_ratios(means) if t["ratio"] is None]
        detail = f"; undefined ratio: {', '.join(undefined)}" if undefined else ""
        lines.append(f"- **Largest drop:** none (no defined stage ratio below 1{detail})")
    return lines + [""]


def _stage_group(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    """Container X, stage means and ratios, the invariant; one line when no stage was given."""
    if not record.stages:
        return [*_missing("Data-path stages", "no data-path stages were given", HINTS["stages"],
                          "container X stats, stage means and ratios, normalization invariant, stage stats")[:-1],
                *_canvas_line(record), ""]
    return _container_section(record, refs) + _stage_sections(record, refs)


def _stage_sections(record: RunRecord, refs: Mapping[str, str]) -> list[str]:
    transitions = stats.stage_ratios(_stage_means(record))
    check = stats.invariant_check(transitions)
    lines = ["### Stage Means"]
    lines += _table(["Stage", "Mean"], "lr",
                    [[_stage_label(s), fmt((s.get("stats") or {}).get("mean"), reason="no finite value")]
                     for s in record.stages]) + [""]
    if not transitions:
        return lines + _missing("Stage Ratios and Normalization Invariant", "one stage recorded: they need two",
                                HINTS["stages"])
    lines += ["### Stage Ratios", "",
              f"Per `{refs['stage_ratios']}`: normalized→prediction and prediction→truth deltas indicate "
              "where amplitude collapses in the pipeline.", ""]
    lines += _table(["Transition", "Ratio"], "lr",
                    [[_transition_label(record, t), fmt(t["ratio"], reason=t["reason"])] for t in transitions])
    lines += ["", "### Normalization Invariant Check", "", *_spec_line(refs["invariant"]),
              "Per the spec, symmetry SHALL hold: `X_scaled = s · X`. The product of stage ratios "
              "(raw→truth) should ideally equal 1.0 for symmetric normalization.", ""]
    lines += _table(["Stage Transition", "Individual Ratio", "Cumulative Product"], "lrr", [
        [_transition_label(record, t), fmt(t["ratio"], reason=t["reason"]),
         fmt(product, reason="follows an undefined ratio")]
        for t, product in zip(transitions, check["cumulative"])])
    passes = {True: "✅ Yes", False: "❌ No"}.get(check["passes"], f"⚠️ {NA} ({check['reason']})")
    lines += [
        "",
        f"**Full chain product (raw→truth):** {fmt(check['product'], reason=check['reason'])}",
        f"**Deviation from unity:** {fmt(check['deviation'], reason=check['reason'])}",
        f"**Tolerance:** {check['tolerance']:g} ({check['tolerance'] * 100:g}%)",
        f"**Passes tolerance:** {passes}",
        "",
    ]
    if check["passes"] is False:
        lines += ["⚠️ **Symmetry violated:** The normalization chain does not preserve amplitude as "
                  f"required by `{refs['invariant']}`.", ""]
    lines += ["**Stage Deviation Breakdown** (sorted by impact):", ""]
    lines += _table(["Stage", "Ratio", "Deviation", "Effect"], "lrrl",
                    [[b["name"], fmt(b["ratio"]), fmt(b["deviation"]), b["effect"]] for b in check["breakdown"]])
    primary = check["primary"]
    lines.append("")
    if primary:
        lines.append(f"**Primary deviation source:** `{primary['name']}` "
                     f"(ratio={fmt(primary['ratio'])}, deviation={fmt(primary['deviation'])})")
    else:
        lines.append(f"**Primary deviation source:** {NA} (no defined stage ratio)")
    return lines + [""]


def _mode_label(mode: str) -> str:
    return mode.replace("_", " ").capitalize()


def _prediction_group(record: RunRecord) -> list[str]:
    """Scaling, amplitude and phase bias against the truth; one line when no truth was given."""
    if not record.prediction:
        return _missing("Prediction ↔ Truth", "no ground truth was given", HINTS["truth"],
                        "scaling, amplitude bias, phase bias")
    return [*_scaling_section(record), *_bias_section(record, "amplitude_bias", "Amplitude Bias"),
            *_bias_section(record, "phase_bias", "Phase Bias")]


def _scaling_section(record: RunRecord) -> list[str]:
    scaling, reason = _prediction_summary(record, "scaling")
    lines = ["### Prediction ↔ Truth Scaling"]
    if not scaling:
        return lines + [f"* {NA} ({reason})", ""]
    lines += _table(["Metric", "Value"], "lr", [
        *([_mode_label("ratio_" + key), fmt(scaling.get(key), reason=reason)]
          for key in ("mean", "median", "p05", "p95")),
        ["Ratio count", fmt(scaling.get("count"), "%d", "not recorded")],
    ])
    best = scaling.get("best")
    baseline = scaling.get("baseline") or {}
    best_reason = reason or "no candidate scalar"
    best_text = f"{best['mode']} ({fmt(best['value'])})" if best else f"{NA} ({best_reason})"
    best = best or {}
    baseline_reason = "no finite pixel pair"
    lines += [
        "",
        f"* Best scalar: {best_text}",
        f"* MAE baseline {fmt(baseline.get('mae'), reason=baseline_reason)} → "
        f"{fmt(best.get('mae'), reason=best_reason)}; RMSE baseline "
        f"{fmt(baseline.get('rmse'), reason=baseline_reason)} → {fmt(best.get('rmse'), reason=best_reason)}",
        "",
    ]
    lines += _table(["Scalar", "Value", "Scaled MAE", "Scaled RMSE"], "lrrr", [
        [_mode_label(c["mode"]), fmt(c.get("value"), reason=reason), fmt(c.get("mae"), reason=reason),
         fmt(c.get("rmse"), reason=reason)] for c in scaling.get("candidates", [])])
    return lines + [""]


def _bias_section(record: RunRecord, key: str, title: str) -> list[str]:
    bias, reason = _prediction_summary(record, key)
    lines = [f"### {title}"]
    if reason:
        return lines + [f"* {NA} ({reason})", ""]
    location = ", ".join(f"{name}={fmt(bias.get(name))}" for name in ("mean", "median", "p05", "p95"))
    lines.append(f"* {location} (over {fmt(bias['count'], '%d', 'count not recorded')} pixels)")
    errors = [f"{label}={fmt(bias.get(name))}" for name, label in (("mae", "MAE"), ("rmse", "RMSE"),
                                                                   ("max_abs", "max_abs"))]
    if "pearson_r" in bias:
        errors.append(f"pearson_r={fmt(bias['pearson_r'], reason='constant input or < 2 pixels')}")
    return lines + ["* " + ", ".join(errors), ""]


def _stage_stats_section(record: RunRecord) -> list[str]:
    rows = []
    for stage in record.stages:
        s = stage.get("stats") or {}
        rows.append([stage.get("name", "?"), str(stage.get("source") or NA),
                     fmt(s.get("count"), "%d", "not recorded"),
                     *(fmt(s.get(k), reason="no finite value") for k in ("mean", "std", "min", "max")),
                     fmt(s.get("nan_count"), "%d", "not recorded"), fmt(s.get("inf_count"), "%d", "not recorded")])
    return ["### Normalization Stage Stats",
            *_table(["Stage", "Source", "Count", "Mean", "Std", "Min", "Max", "NaN count", "Inf count"],
                    "llrrrrrrr", rows), ""]


_PHYSICS_LABELS = {
    "photon_budget": "Photon budget (mean Σ predicted / Σ measured)",
    "nonpositive_fraction": "Fraction of predicted intensities ≤ 0",
    "saturation_fraction": "Amplitude-head saturation fraction",
}


def _failure_step(record: RunRecord) -> int | None:
    steps = [e.get("step") for e in record.nan_events if isinstance(e.get("step"), int)]
    return min(steps) if steps else None


def _moved_line(entry: Mapping) -> str:
    label = _PHYSICS_LABELS[entry["measure"]]
    if entry["moved"] is None:
        values = f"{fmt(entry['last'], reason='no evaluation')}, moved: {NA} ({entry['reason']})"
    else:
        verdict = "⚠️ moved" if entry["moved"] else "steady"
        values = f"{fmt(entry['first'])} → {fmt(entry['last'])}: {verdict}"
    if entry["measure"] == "nonpositive_fraction" and (entry["last"] or 0) > 0:
        values += "; ⚠️ above 0: the Poisson NLL's log is -Inf at those pixels"
    return f"- {label}: {values}"


def _physics_section(record: RunRecord) -> list[str]:
    """Physics health over the evaluations, and which measure moved before a failure."""
    if not record.physics:
        return _missing("Physics Health", "no probe batch with measured counts was given", HINTS["counts"],
                        "photon budget, predicted intensities ≤ 0, saturation")
    failure = _failure_step(record)
    rows = []
    for evaluation in record.physics:
        budget = evaluation.get("photon_budget") or {}
        nonpositive = evaluation.get("nonpositive_fraction") or {}
        saturation = evaluation.get("saturation_fraction") or {}
        step = evaluation.get("step")
        after = failure is not None and isinstance(step, int) and step >= failure
        rows.append([
            fmt(evaluation.get("epoch"), "%d", "not recorded"), fmt(step, "%d", "not recorded"),
            *(fmt(budget.get(key), reason=budget.get("reason") or "not recorded") for key in ("mean", "p05", "p95")),
            fmt(nonpositive.get("fraction"), reason=nonpositive.get("reason") or "not recorded"),
            fmt(saturation.get("fraction"), reason=saturation.get("reason") or "not recorded"),
            "after the failure" if after else "",
        ])
    lines = [
        "### Physics Health", "",
        "On the probe batch: the photon budget is Σ predicted intensity / Σ measured counts per pattern "
        "(1 when the model conserves photons); predicted intensities ≤ 0 make the Poisson NLL's log -Inf "
        "or NaN; a saturated amplitude head passes no gradient.", "",
        *_table(["Epochs completed", "Step (train steps done)", "Budget mean", "Budget p05", "Budget p95",
                 "I_pred ≤ 0", "Amp. saturation", "Note"], "rrrrrrrl", rows),
        "",
    ]
    if failure is None:
        return lines
    moved = physics.moved_before(record.physics, failure)
    lines += [f"**Early warnings before the failure** (at step {failure}, the failing train step), first → last "
              "evaluation before it:", ""]
    lines += [_moved_line(entry) for entry in moved] + [""]
    names = [_PHYSICS_LABELS[e["measure"]].split(" (")[0].lower() for e in moved if e["moved"]]
    if names:
        lines.append(f"**Moved before the failure:** {', '.join(names)}")
    elif all(e["moved"] is False for e in moved):
        lines.append("**Moved before the failure:** none: these measures gave no warning")
    else:
        lines.append(f"**Moved before the failure:** {NA} (not enough evaluations before the failure)")
    return lines + [""]


_STAGE_TEXT = {
    "forward": "forward pass",
    "loss": "loss",
    "gradients": "gradients (backward pass)",
    "none": "none: the replayed step is finite",
}


def _sample_flags_line(label: str, flags: Mapping | None, kind: str) -> str | None:
    found = [f"`{key}` samples {entry.get(kind)}" for key, entry in (flags or {}).items() if entry.get(kind)]
    return f"- {label}: {'; '.join(found)}" if found else None


def forensics_lines(forensics: Mapping) -> list[str]:
    """The "NaN Forensics" section for a replay result (`ptycho_callbacks.forensics.replay`)."""
    lines = ["### NaN Forensics", ""]
    folder = forensics.get("folder")
    folder_line = f"- Saved step: `{folder}`" if folder else f"- Saved step: {NA} (no nan_forensics folder)"
    stage = forensics.get("stage")
    if stage not in _STAGE_TEXT:
        return lines + [f"- Where: {NA} ({forensics.get('reason') or 'the step was not replayed'})",
                        folder_line, ""]
    check = forensics.get("check_numerics") or {}
    op = forensics.get("op")
    if op:
        function = check.get("function")
        op_text = f"`{op}`" + (f" in `{function}`" if function else "")
        if check.get("values"):
            op_text += f" ({check['values']})"
    else:
        op_text = f"{NA} ({check.get('reason') or 'not checked: the step is finite'})"
    samples = forensics.get("samples") or []
    size = forensics.get("batch_size")
    lines += [
        f"- Where: {_STAGE_TEXT[stage]}",
        f"- Layer: `{forensics['layer']}`" if forensics.get("layer") else f"- Layer: {NA} (not identified)",
        f"- Op: {op_text}",
    ]
    if forensics.get("loss"):
        lines.append(f"- Loss function: `{forensics['loss']}`")
    if forensics.get("caveat"):
        lines.append(f"- Caveat: {forensics['caveat']}")
    lines.append(f"- Samples involved: {samples} of {fmt(size, '%d', 'batch size not recorded')}" if samples
                 else f"- Samples involved: {NA} (no sample singled out)")
    lines += [line for line in (
        _sample_flags_line("Non-finite inputs", forensics.get("inputs"), "nonfinite"),
        _sample_flags_line("Extreme inputs", forensics.get("inputs"), "extreme"),
        _sample_flags_line("Non-finite targets", forensics.get("targets"), "nonfinite"),
    ) if line]
    weights = forensics.get("nonfinite_weights") or []
    lines.append(f"- Non-finite weights before the step: {_code_list(weights) if weights else 'none'}")
    lines.append(folder_line)
    for dropped in forensics.get("dropped") or []:
        lines.append(f"  - dropped {dropped.get('part')}: {dropped.get('reason')}")
    if forensics.get("message"):
        lines += ["", forensics["message"]]
    components = forensics.get("loss_components") or {}
    if components:
        lines += [""] + _table(["Component", "Loss", "Weight", "Value", "Non-finite samples"], "llrrl", [
            [f"`{name}`", f"`{c.get('loss')}`", fmt(c.get("weight"), reason="unknown"),
             fmt(c.get("value"), reason="not finite"), str(c.get("samples") or "none")]
            for name, c in components.items()])
    norms = forensics.get("gradient_norms") or []
    if norms:
        lines += ["", "Gradient norms per layer at the failing step:", ""]
        lines += _table(["Layer", "Gradient norm"], "lr",
                        [[f"`{n.get('layer')}`", fmt(n.get("norm"), reason="not finite")] for n in norms])
    return lines + [""]


def _forensics_section(record: RunRecord) -> list[str]:
    return forensics_lines(record.forensics) if record.forensics is not None else []


_MARKDOWN_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]", "&": "&amp;",
                                   "<": "&lt;", ">": "&gt;", "\n": " ", "\r": " "})


def markdown_safe(value: Any) -> Any:
    """`value` with every string in it (keys too) made inert in Markdown.

    A record may come from someone else: a scenario, a finding or a layer
    name holding `<script>`, a `[link](javascript:...)`, a `|` or a line
    break would otherwise be markup in report.md and TensorBoard's Text tab,
    or break its tables. Backslashes, `|` and brackets are escaped, `&`, `<`
    and `>` become entities, line breaks spaces; ordinary names and messages
    pass unchanged.
    """
    if isinstance(value, str):
        return value.translate(_MARKDOWN_ESCAPES)
    if isinstance(value, dict):
        return {markdown_safe(key): markdown_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [markdown_safe(item) for item in value]
    return value


def _safe_record(record: RunRecord) -> RunRecord:
    return dataclasses.replace(record, **{field.name: markdown_safe(getattr(record, field.name))
                                          for field in dataclasses.fields(record)})


def render_scenario(record: RunRecord, spec_refs: Mapping[str, str] | None = None,
                    spec_prefix: str | None = None) -> str:
    """The per-scenario part of the report for one record (Markdown; its text escaped by `markdown_safe`)."""
    return _scenario_markdown(_safe_record(record), markdown_safe(spec_refs), markdown_safe(spec_prefix))


def _scenario_markdown(record: RunRecord, spec_refs: Mapping[str, str] | None, spec_prefix: str | None = None) -> str:
    refs = {**spec_refs_for(spec_prefix), **(spec_refs or {}), **(record.config.get("spec_refs") or {})}
    lines = [
        *_scenario_header(record),
        *_nan_event_section(record),
        *_forensics_section(record),
        *_other_findings(record),
        *_loss_section(record, refs),
        *_physics_section(record),
        *_intensity_scale_section(record, refs),
        *_scaler_state_section(record, refs),
        *_stage_group(record, refs),
        *_prediction_group(record),
        *(_stage_stats_section(record) if record.stages else []),
        "---",
    ]
    return "\n".join(lines)


def render_report(
    records: RunRecord | Sequence[RunRecord],
    title: str = "Intensity Bias Summary",
    generated_at: str | None = None,
    spec_refs: Mapping[str, str] | None = None,
    spec_prefix: str | None = None,
) -> str:
    """Render one or many records as one Markdown report.

    Args:
        records: A `RunRecord` or a sequence of them (one scenario each).
        title: The report's top-level heading.
        generated_at: Timestamp to print; defaults to now (UTC, ISO-8601).
        spec_refs: Overrides of the spec references (`DEFAULT_SPEC_REFS`'s
            keys, full texts) for every scenario; a record's
            `config["spec_refs"]` overrides these for that scenario.
        spec_prefix: The folder of the cited specifications (`SPEC_FILES`),
            `docs/specs/` by default as in PtychoPINN's main branch; e.g.
            `"specs/"` for a checkout that keeps them at the top.

    Returns:
        The Markdown text, ending with a newline.
    """
    if isinstance(records, RunRecord):
        records = [records]
    records = [_safe_record(record) for record in records]
    spec_refs, title, spec_prefix = markdown_safe(spec_refs), markdown_safe(title), markdown_safe(spec_prefix)
    refs = {**spec_refs_for(spec_prefix), **(spec_refs or {})}
    generated_at = generated_at or datetime.datetime.now(datetime.timezone.utc).isoformat()
    lines = [
        f"# {title}", "", *_spec_line(refs["report"]),
        f"- Generated at: {generated_at}",
        f"- Scenario count: {len(records)}",
        "",
        *_comparison_table(records),
        "",
    ]
    sections = [_scenario_markdown(record, spec_refs, spec_prefix) for record in records]
    return "\n".join(lines + sections) + "\n"
