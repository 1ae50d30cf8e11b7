"""The figures: pure plotting from numpy arrays and records, missing data, NaN, and no matplotlib at all."""

import math
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptycho_callbacks import figures
from ptycho_callbacks.record import RunRecord

pytestmark = pytest.mark.core

needs_matplotlib = pytest.mark.skipif(figures.missing_matplotlib() is not None,
                                      reason="matplotlib is not installed (the plots extra)")


def png_size(path):
    """(width, height) of a PNG file; AssertionError when it is none."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_sane_png(path):
    """A PNG readable on a laptop and in print: about 1000 pixels wide, neither a sliver nor a poster."""
    width, height = png_size(path)
    assert 900 <= width <= 1300, (path, width)
    assert 250 <= height <= 2500, (path, height)
    assert 5_000 < os.path.getsize(path) < 1_500_000


def _objects(samples=3, size=24, seed=0):
    rng = np.random.default_rng(seed)
    truth = (0.5 + rng.random((samples, size, size, 1))) * np.exp(1j * rng.uniform(-3, 3, (samples, size, size, 1)))
    prediction = 1.2 * truth * np.exp(0.3j)
    return prediction.astype(np.complex64), truth.astype(np.complex64)


def _record(scenario="gs2_base", epochs=4, nan_at=None):
    """A record as a suite run leaves it: losses per batch and per epoch, log_scale, stages."""
    steps = list(range(1, 4 * epochs + 1))
    nll = [-3.9e6 - 1e3 * s for s in steps]
    mae = [250.0 - 5 * s for s in steps]
    if nan_at is not None:
        nll[nan_at - 1] = math.nan
    batch = {"loss": [a + b for a, b in zip(nll, mae)], "pred_intensity_loss": nll,
             "intensity_scaler_inv_loss": mae, "trimmed_obj_loss": [0.2] * len(steps)}
    history = {name: values[3::4] for name, values in batch.items()}
    history["val_loss"] = [v + 10 for v in history["loss"]]
    record = RunRecord(
        scenario=scenario, status="stopped_nan" if nan_at else "completed",
        config={"intensity_scale": 988.212, "loss_weights": {"trimmed_obj_loss": 0.0,
                                                             "intensity_scaler_inv_loss": 1.0,
                                                             "pred_intensity_loss": 1.0}},
        history=history, batch_history=batch, batch_steps=steps,
        log_scale={"found": True, "initial": math.log(988.212), "history": [6.9 + 0.01 * e for e in range(epochs)],
                   "in_trainable_variables": True},
        stages=[{"name": n, "label": n.replace("_", " "), "stats": {"mean": m, "std": m / 2}}
                for n, m in (("raw_diffraction", 0.146), ("grouped_X_full", 0.085), ("container_X", 0.085),
                             ("prediction", 0.4), ("truth", 2.7))])
    if nan_at is not None:
        record.nan_events.append({"step": nan_at, "epoch": 0, "batch": nan_at - 1, "components": ["loss"]})
    return record


@needs_matplotlib
def test_a_run_s_figures_are_pngs_readable_on_a_laptop(tmp_path):
    prediction, truth = _objects()
    drawn = figures.write_run_figures(_record(), str(tmp_path), prediction=prediction, truth=truth, step=16)
    assert [f.name for f in drawn] == list(figures.RUN_FIGURES)
    for figure in drawn:
        assert figure.reason is None and figure.path == str(tmp_path / figure.name)
        assert_sane_png(figure.path)
    assert sorted(os.listdir(tmp_path)) == sorted(figures.RUN_FIGURES)  # no temporary file left
    assert [f.name for f in figures.existing_figures(str(tmp_path.parent))] == []  # not a run directory
    drawn = figures.write_run_figures(_record(), str(tmp_path))  # this time no truth: the old pictures go
    assert {f.name for f in drawn if f.path} == {"losses.png", "log_scale.png", "stage_means.png"}
    assert sorted(os.listdir(tmp_path)) == ["log_scale.png", "losses.png", "stage_means.png"]


@needs_matplotlib
def test_figures_without_data_are_left_out_with_the_reason(tmp_path):
    drawn = figures.write_run_figures(RunRecord(scenario="empty"), str(tmp_path))
    reasons = {f.name: f.reason for f in drawn}
    assert all(f.path is None for f in drawn)
    assert "truth" in reasons["prediction.png"] and "truth" in reasons["bias_histograms.png"]
    assert reasons["losses.png"] == "no loss recorded"
    assert reasons["log_scale.png"] == "no log_scale watched"
    assert "stages" in reasons["stage_means.png"]
    assert not os.path.exists(tmp_path) or os.listdir(tmp_path) == []
    section = figures.figures_section(drawn, str(tmp_path))
    assert section[0] == "## Figures" and all(f"n/a ({f.reason})" in "\n".join(section) for f in drawn)


@needs_matplotlib
@pytest.mark.parametrize("case", ["all_nan", "inf", "real", "zeros", "constant"])
def test_prediction_figures_take_nan_inf_real_and_constant_arrays(tmp_path, case):
    prediction, truth = _objects(samples=2, size=8)
    if case == "all_nan":
        prediction = np.full_like(prediction, np.nan)
    elif case == "inf":
        prediction[0, :2] = np.inf
    elif case == "real":
        prediction, truth = np.abs(prediction), np.abs(truth)
    elif case == "zeros":
        prediction, truth = np.zeros_like(prediction), np.zeros_like(truth)
    else:
        prediction = np.ones_like(prediction)
    drawers = [figures.prediction_figure]
    if case in ("all_nan", "real"):
        drawers.append(figures.bias_histograms_figure)
    for draw in drawers:
        path = str(tmp_path / f"{draw.__name__}.png")
        assert draw(prediction, truth, path) == path
        assert_sane_png(path)


@needs_matplotlib
def test_arrays_that_hold_no_pair_of_images_draw_nothing(tmp_path):
    prediction, truth = _objects(samples=2, size=8)
    path = str(tmp_path / "p.png")
    assert figures.prediction_figure(prediction, truth[:, :4], path) is None  # other shapes
    assert figures.prediction_figure(np.zeros(5), np.zeros(5), path) is None  # no image
    assert figures.bias_histograms_figure(np.zeros(0), np.zeros(0), path) is None
    assert figures.prediction_figure(prediction[0, ..., 0], truth[0, ..., 0], path) == path  # one 2-D image
    assert os.listdir(tmp_path) == ["p.png"]


@needs_matplotlib
def test_losses_of_a_run_that_went_nan_are_drawn_with_the_event_marked(tmp_path):
    record = _record(nan_at=6)
    record.history["loss"] = [math.nan] * 4  # every epoch value non-finite
    record.history["intensity_scaler_inv_loss"][1] = "not a number"  # a record from someone else
    record.log_scale["history"] = [math.nan, math.inf]
    record.config["loss_weights"] = 5
    assert_sane_png(figures.losses_figure(record, str(tmp_path / "losses.png")))
    assert_sane_png(figures.log_scale_figure(record, str(tmp_path / "log_scale.png")))
    record.stages[1]["stats"]["mean"] = None  # n/a in the report
    record.stages[2]["stats"] = {}
    record.stages[3]["stats"] = ["not", "statistics"]
    assert_sane_png(figures.stage_means_figure(record, str(tmp_path / "stages.png")))


@needs_matplotlib
def test_names_from_a_record_are_text_not_markup(tmp_path):
    record = _record(scenario="_$\\alpha$ <b>x</b>")
    record.stages[0]["label"] = "$x^"  # broken mathtext would raise if it were parsed
    assert figures.plain("_hidden") == " _hidden" and figures.plain("$a$") == r"\$a\$"
    for draw in (figures.losses_figure, figures.log_scale_figure, figures.stage_means_figure):
        assert draw(record, str(tmp_path / "f.png"))
    assert figures.write_comparison_figures([record, _record("b")], str(tmp_path / "cmp"))[0].path


@needs_matplotlib
def test_several_runs_side_by_side_with_a_section_linking_them(tmp_path):
    records = [_record("gs2_base", nan_at=3), _record("gs2_ne60", epochs=6), RunRecord(scenario="nothing")]
    records[0].history["loss"] = [math.nan] * 4
    report = tmp_path / "out" / "summary.md"
    report.parent.mkdir()
    section = figures.write_comparison_section(records, str(report))
    links = [line[line.index("](") + 2:-1] for line in section.splitlines() if line.startswith("![")]
    assert links == ["figures/compare_losses.png", "figures/compare_log_scale.png"]
    for link in links:
        assert_sane_png(report.parent / link)
    assert section.startswith("## Figures comparing the runs\n")


@needs_matplotlib
def test_a_comparison_without_data_draws_nothing_and_says_why(tmp_path):
    drawn = figures.write_comparison_figures([RunRecord(scenario="a"), RunRecord(scenario="b")], str(tmp_path))
    assert [(f.path, f.reason) for f in drawn] == [(None, "no run recorded a loss"),
                                                   (None, "no run watched log_scale")]


def test_the_section_without_matplotlib_says_how_to_get_the_figures_in_one_line():
    missing = [figures.FigureFile(name, figures.TITLES[name], reason="matplotlib is not installed (ImportError)")
               for name in figures.RUN_FIGURES]
    lines = [line for line in figures.figures_section(missing, "runs/a") if line]
    assert lines == ["## Figures", "Figures: n/a (matplotlib is not installed (ImportError)): "
                                   "`pip install 'ptycho_callbacks[plots]'` draws them beside this report and in "
                                   "TensorBoard's Images tab."]
    assert figures.figures_text([], "runs/a") == ""
    assert figures.figures_text(missing, "runs/a").startswith("\n## Figures\n")


def test_the_links_are_relative_to_the_report_and_tensorboard_s_copy_only_names_the_files(tmp_path):
    drawn = [figures.FigureFile("losses.png", "Losses", path=str(tmp_path / "figures" / "losses.png"))]
    assert "![Losses](figures/losses.png)" in figures.figures_text(drawn, str(tmp_path))
    named = figures.figures_text(drawn, None)
    assert "- Losses: `figures/losses.png`" in named and "](" not in named


def test_without_matplotlib_nothing_is_drawn_and_nothing_fails(tmp_path):
    """`import matplotlib` fails in a fresh process: the figures say how to get them, and no file is written."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None  # as if the plots extra were not installed
        import numpy as np
        from ptycho_callbacks import figures
        from ptycho_callbacks.record import RunRecord
        record = RunRecord(scenario="a", history={{"loss": [1.0, 0.5]}})
        drawn = figures.write_run_figures(record, {str(tmp_path)!r}, prediction=np.ones((1, 4, 4)),
                                          truth=np.ones((1, 4, 4)))
        assert all(f.path is None and f.reason.startswith("matplotlib is not installed") for f in drawn), drawn
        assert all(f.path is None for f in figures.write_comparison_figures([record], {str(tmp_path)!r}))
        print(figures.figures_text(drawn, {str(tmp_path)!r}))
        print(figures.write_comparison_section([record], {str(tmp_path / "summary.md")!r}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("`pip install 'ptycho_callbacks[plots]'` draws them") == 2
    assert os.listdir(tmp_path) == []



def test_the_report_command_draws_several_runs_side_by_side_beside_its_file(tmp_path, monkeypatch, capsys):
    from ptycho_callbacks.cli import main

    monkeypatch.setenv(figures.FIGURES_ENV, "1")
    for name in ("gs2_base", "gs2_ne60"):
        os.makedirs(tmp_path / name)
        _record(scenario=name).save(str(tmp_path / name / "record.json"))
    out = tmp_path / "compare" / "summary.md"
    os.makedirs(out.parent)
    assert main(["report", str(tmp_path / "gs2_base"), str(tmp_path / "gs2_ne60"), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## Figures comparing the runs" in text
    for link in ("figures/compare_losses.png", "figures/compare_log_scale.png"):
        assert link in text and os.path.getsize(out.parent / link) > 1000
