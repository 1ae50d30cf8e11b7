"""The `ptycho-callbacks` command line: help of every command, `report` comparing runs, errors."""

import math
import os

import numpy as np
import pytest

from ptycho_callbacks import stats
from ptycho_callbacks.cli import COMMANDS, main
from ptycho_callbacks.record import RunRecord


def _help_case(argv):
    """`replay --help` imports the forensics, which import TensorFlow: that case is a Keras test."""
    return pytest.param(argv, marks=pytest.mark.keras if "replay" in argv else pytest.mark.core)


@pytest.mark.parametrize("argv", [_help_case(argv) for argv in [["--help"]] + [[n, "--help"] for n in COMMANDS]])
def test_every_help_says_what_it_does_with_an_example(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ptycho-callbacks")
    assert "example" in out
    if argv == ["--help"]:
        assert all(f"  {name} " in out for name in COMMANDS)  # one summary line per command


def _run_dir(root, scenario, amplitude_offset, loss):
    """A run directory holding a record whose prediction is off from truth by `amplitude_offset`."""
    truth = np.linspace(1.0, 2.0, 50)
    record = RunRecord(
        scenario=scenario, status="completed", config={"intensity_scale": 988.212},
        history={"loss": [2.0, loss]},
        prediction={"amplitude_bias": stats.amplitude_bias(truth + amplitude_offset, truth)})
    run_dir = os.path.join(root, scenario)
    os.makedirs(run_dir)
    record.save(os.path.join(run_dir, "record.json"))
    return run_dir


@pytest.mark.core
def test_report_compares_several_runs_in_one_report(tmp_path, capsys):
    base = _run_dir(tmp_path, "gs2_base", -0.25, math.nan)
    longer = _run_dir(tmp_path, "gs2_ne60", 0.5, 1.0)
    output = tmp_path / "summary.md"
    assert main(["report", base, longer, "-o", str(output)]) == 0
    assert capsys.readouterr().out == ""
    text = output.read_text()
    assert text.count("# Intensity Bias Summary\n") == 1
    assert "- Scenario count: 2" in text
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith(("| gs2_base |", "| gs2_ne60 |"))}
    assert rows["gs2_base"][0] == "-0.2500" and rows["gs2_base"][-1] == "Yes"
    assert rows["gs2_ne60"][0] == "0.5000" and rows["gs2_ne60"][-1] == "No"
    assert text.index("## Scenario: gs2_base") < text.index("## Scenario: gs2_ne60")


@pytest.mark.core
def test_report_of_a_parent_directory_takes_every_run_in_it(tmp_path, capsys):
    _run_dir(tmp_path, "b_run", 0.1, 1.0)
    _run_dir(tmp_path, "a_run", 0.2, 1.0)
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "- Scenario count: 2" in text
    assert text.index("## Scenario: a_run") < text.index("## Scenario: b_run")


@pytest.mark.core
def test_report_of_a_missing_path_fails_with_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["report", str(missing), "-o", str(tmp_path / "summary.md")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("ptycho-callbacks report: error:") and str(missing) in line
    assert not (tmp_path / "summary.md").exists()


@pytest.mark.core
@pytest.mark.parametrize("argv", [[], ["train"], ["demo", "--out", "x", "--scenario", "no_such_scenario"]])
def test_usage_errors_exit_2_and_say_why(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ptycho-callbacks") and "error:" in err
