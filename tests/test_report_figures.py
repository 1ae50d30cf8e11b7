"""The figures of a real run: drawn at its close, linked from report.md, shown in TensorBoard, never fatal."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptycho_callbacks import figures, stats
from ptycho_callbacks.callbacks.summary_report import SummaryReport
from ptycho_callbacks.figures import FIGURES_ENV
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.suite import Probe, default_callbacks

import tensorboard_events
from test_figures import assert_sane_png, png_size

pytestmark = pytest.mark.keras

SEED = 4

needs_matplotlib = pytest.mark.skipif(figures.missing_matplotlib() is not None,
                                      reason="matplotlib is not installed (the plots extra)")


def _links(report_text):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_text)


def _fit(model, data, callbacks, epochs=1):
    """Trains, then waits for the figures, which the run's close draws off the training thread."""
    model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=epochs, verbose=0,
              callbacks=callbacks)
    assert callbacks[0].run.wait(timeout=300)


@needs_matplotlib
def test_a_suite_run_draws_its_figures_links_them_and_shows_them_in_tensorboard(make_model, small_data, tmp_path,
                                                                              monkeypatch):
    monkeypatch.delenv(FIGURES_ENV, raising=False)  # the default: figures on (the tests' conftest turns them off)
    model = make_model(SEED)
    inputs = {key: value[:4] for key, value in small_data.model_inputs().items()}
    stages = [dict(name=name, label=label, source=source, array=array)
              for name, label, source, array in small_data.stages()]
    run = str(tmp_path / "run")
    suite = default_callbacks(model, run, stages=stages, verbose=0, probe=Probe(inputs, truth=small_data.truth_object[:4]))
    _fit(model, small_data, suite)

    # StageStatistics left the prediction it measured last, and its truth, with the run for the close.
    arrays, record = suite[0].run.arrays, suite[0].run.record
    np.testing.assert_array_equal(arrays["truth"], small_data.truth_object[:4])
    assert arrays["prediction"].shape == arrays["truth"].shape and arrays["prediction_step"] == record.batch_steps[-1]
    assert stats.amplitude_bias(np.abs(arrays["prediction"]), np.abs(arrays["truth"])) == \
        record.prediction["amplitude_bias"]

    text = open(os.path.join(run, "report.md"), encoding="utf-8").read()
    links = _links(text)
    assert links == [f"figures/{name}" for name in figures.RUN_FIGURES]
    for link in links:
        assert_sane_png(os.path.join(run, link))
    assert text.index("## Figures") > text.index("## Scenario: run")

    accumulator = tensorboard_events.load(run)
    images = {tag: accumulator.Tensors(tag) for tag in accumulator.Tags()["tensors"]
              if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "images"
              and tag.startswith("figures/")}
    assert sorted(images) == sorted(f"figures/{name[:-4]}" for name in figures.RUN_FIGURES)
    for tag, events in images.items():
        (event,) = events
        width, height, png = event.tensor_proto.string_val
        assert png.startswith(b"\x89PNG") and (int(width), int(height)) == png_size(
            os.path.join(run, "figures", tag.split("/")[1] + ".png"))
        assert event.step == record.batch_steps[-1]
    shown = tensorboard_events.texts(run)["report/summary"][0][1]
    assert "`figures/prediction.png`" in shown and not _links(shown)  # TensorBoard cannot follow a relative link


@needs_matplotlib
def test_without_matplotlib_the_report_says_how_to_get_the_figures(make_model, small_data, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` fails, as without the plots extra
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = str(tmp_path / "run")
    _fit(make_model(SEED), small_data, [SummaryReport(run, figures=True)])
    text = open(os.path.join(run, "report.md"), encoding="utf-8").read()
    (line,) = [line for line in text.splitlines() if line.startswith("Figures: n/a")]
    assert "`pip install 'ptycho_callbacks[plots]'`" in line
    assert not os.path.exists(os.path.join(run, "figures"))
    assert RunRecord.load(os.path.join(run, "record.json")).status == "completed"


@needs_matplotlib
@pytest.mark.parametrize("fault", ["plotting_error", "unwritable_folder"])
def test_a_figure_that_cannot_be_drawn_costs_a_warning_not_the_training(make_model, small_data, tmp_path,
                                                                        monkeypatch, fault):
    run = tmp_path / "run"
    if fault == "plotting_error":
        def broken(record, path):
            raise ValueError("a matplotlib bug")
        monkeypatch.setattr(figures, "losses_figure", broken)
        code = "figures_failed"
    else:
        run.mkdir()
        (run / "figures").write_text("a file where the folder should be")
        code = "logging_failed"
    with pytest.warns(RuntimeWarning, match="figures"):
        _fit(make_model(SEED), small_data, [SummaryReport(str(run), figures=True)])
    record = RunRecord.load(str(run / "record.json"))
    assert record.status == "completed" and len(record.history["loss"]) == 1
    assert [f["code"] for f in record.findings] == [code]
    text = (run / "report.md").read_text(encoding="utf-8")
    assert "## Scenario: run" in text and not _links(text) and code in text


@needs_matplotlib
def test_a_process_that_ends_right_after_fit_still_draws_and_links_its_figures(tmp_path):
    """The figures are drawn off the training thread; the process's exit waits for them."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        from ptycho_callbacks.callbacks.summary_report import SummaryReport
        from ptycho_callbacks.sim.data import simulate
        from ptycho_callbacks.sim.model import build_model

        data = simulate(N=16, gridsize=2, n_scan=5, nphotons=1e6, seed=3)
        model = build_model(N=16, n_filters=4, probe=data.probe, intensity_scale=data.intensity_scale)
        model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=1, verbose=0,
                  callbacks=[SummaryReport({str(run)!r}, figures=True)])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    links = _links((run / "report.md").read_text(encoding="utf-8"))
    assert links == ["figures/losses.png"]  # SummaryReport alone watches no log_scale
    assert_sane_png(str(run / links[0]))
    assert os.listdir(run / "figures") == ["losses.png"]  # and no temporary file left


def test_figures_are_off_when_the_environment_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(FIGURES_ENV, "0")
    assert SummaryReport(str(tmp_path / "a")).figures is False
    assert SummaryReport(str(tmp_path / "b"), figures=True).figures is True
    monkeypatch.delenv(FIGURES_ENV)
    assert SummaryReport(str(tmp_path / "c")).figures is True

