"""`ptycho-callbacks report` over many runs: globs and folders of runs, chosen columns, sorting, md/csv/json."""

import csv
import io
import json
import math
import os
import re

import pytest

from ptycho_callbacks.cli import main
from ptycho_callbacks.record import RunRecord

pytestmark = pytest.mark.core

PROG = "ptycho-callbacks report"


def _run(root, name, nphotons, final_loss, status="completed", nan_step=None):
    record = RunRecord(scenario=name, status=status,
                       config={"nphotons": nphotons, "learning_rate": 1e-3, "intensity_scale": 988.212,
                               "loss_weights": {"pred_intensity_loss": 1.0}},
                       history={"loss": [5.0, final_loss], "pred_intensity_loss": [4.0, final_loss]},
                       nan_events=[{"step": nan_step, "components": ["pred_intensity_loss"]}] if nan_step else [])
    run_dir = os.path.join(root, name)
    os.makedirs(run_dir)
    record.save(os.path.join(run_dir, "record.json"))
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    """A folder of three runs, one of them two levels down and one that went NaN, plus TensorBoard clutter."""
    root = tmp_path / "sweep"
    _run(str(root), "np1e6", 1e6, 2.0)
    _run(str(root / "group"), "np1e9", 1e9, 1.0)
    _run(str(root), "np1e3", 1e3, math.nan, status="stopped_nan", nan_step=7)
    os.makedirs(root / "np1e6" / "ptycho" / "train")
    return root


def _out(capsys, argv):
    status = main(["report", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_folder_of_runs_is_searched_below_and_the_columns_are_chosen(sweep, capsys):
    status, out, err = _out(capsys, [str(sweep), "--columns", "scenario,status,nphotons,final_loss,nan_step"])
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "| scenario | status | nphotons | final_loss | nan_step |"
    assert lines[1] == "| --- | --- | ---: | ---: | ---: |"
    assert lines[2:] == ["| np1e9 | completed | 1.000e+09 | 1.000 | -1 |",  # in path order: group/np1e9 first
                         "| np1e3 | stopped_nan | 1000 | NaN | 7 |",
                         "| np1e6 | completed | 1.000e+06 | 2.000 | -1 |"]


def test_sorting_puts_unknown_values_last_both_ways(sweep, capsys):
    for flags, order in (([], ["np1e9", "np1e6", "np1e3"]), (["--desc"], ["np1e6", "np1e9", "np1e3"])):
        status, out, _ = _out(capsys, [str(sweep), "--format", "csv", "--columns", "scenario,final_loss",
                                       "--sort", "final_loss", *flags])
        assert status == 0
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [row["scenario"] for row in rows] == order
    assert rows[-1]["final_loss"] == "NaN" and rows[0]["final_loss"] == "2.0"


def test_json_for_scripts_keeps_types_and_unknowns(sweep, capsys):
    status, out, _ = _out(capsys, [str(sweep), "--format", "json", "--sort", "nphotons"])
    assert status == 0
    rows = json.loads(out)
    assert [row["scenario"] for row in rows] == ["np1e3", "np1e6", "np1e9"]
    assert rows[0]["went_nan"] is True and rows[0]["nan_step"] == 7 and rows[0]["final_loss"] == "NaN"
    assert rows[1]["went_nan"] is False and rows[1]["nan_step"] == -1
    assert rows[1]["amp_bias_mean"] is None and rows[1]["trained_scale"] is None  # no truth, no log_scale: unknown


def test_a_quoted_glob_names_runs(sweep, capsys):
    status, out, _ = _out(capsys, [str(sweep / "np1e*"), "--format", "csv", "--columns", "scenario"])
    assert status == 0 and out.split() == ["scenario", "np1e3", "np1e6"]
    assert _out(capsys, [str(sweep / "nothing*")])[0] == 2


def test_one_bad_run_among_many_is_skipped_with_one_line(sweep, capsys):
    bad = sweep / "broken"
    os.makedirs(bad)
    (bad / "record.json").write_text("{not json")
    for extra in ([], ["--columns", "scenario"]):
        status, out, err = _out(capsys, [str(sweep), str(sweep / "missing"), *extra])
        assert status == 0
        lines = err.splitlines()
        assert len(lines) == 2 and all(line.startswith(f"{PROG}: skipped: ") for line in lines), err
        assert any(str(bad / "record.json") in line for line in lines)
        assert any(str(sweep / "missing") in line for line in lines)
        assert "np1e6" in out and "Traceback" not in err


def test_no_readable_run_exits_2_with_one_error_line_each(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "record.json").write_text("[]")
    status, out, err = _out(capsys, [str(tmp_path / "a"), str(tmp_path / "b"), "--format", "csv"])
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 2 and all(line.startswith(f"{PROG}: error: ") for line in err.splitlines())


def test_the_full_report_stays_the_default(sweep, capsys):
    status, out, _ = _out(capsys, [str(sweep / "np1e6")])
    assert status == 0 and out.startswith("# Intensity Bias Summary\n") and "- Scenario count: 1" in out
    assert "## Scenario: np1e6" in out


@pytest.mark.parametrize("argv, says", [
    (["--columns", "scenario,no_such"], "no such column: no_such"),
    (["--sort", "no_such"], "no such column: no_such"),
    (["--format", "report", "--sort", "scenario"], "give --format md, csv or json"),
    ([], None),
])
def test_usage_errors_are_one_line_and_exit_2(sweep, capsys, argv, says):
    paths = [str(sweep)] if argv else []
    status, out, err = _out(capsys, paths + argv)
    assert status == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"{PROG}: error: ") and (says is None or says in line), line


def test_columns_help_lists_what_the_runs_have(sweep, capsys):
    status, out, _ = _out(capsys, ["--columns", "help"])
    assert status == 0 and "final_<loss>" in out and "nan_step" in out
    status, out, _ = _out(capsys, [str(sweep), "--columns", "help"])
    assert status == 0 and "final_pred_intensity_loss" in out and "weight_pred_intensity_loss" in out


def test_markdown_cells_from_a_stranger_are_inert(tmp_path, capsys):
    run = tmp_path / "x"
    run.mkdir()
    RunRecord(scenario="<script>|a", config={"optimizer": "[l](javascript:x)"}).save(str(run / "record.json"))
    status, out, _ = _out(capsys, [str(run), "--columns", "scenario,optimizer"])
    assert status == 0 and "<script>" not in out
    assert not re.search(r"(?<!\\)\]\(javascript:", out), "a link Markdown would follow"
    assert out.splitlines()[2].count(" | ") == 1  # the | in the name does not make a column


def test_text_from_a_record_never_becomes_a_spreadsheet_formula(tmp_path, capsys):
    _run(str(tmp_path), "hostile", 1e6, 1.0)
    path = tmp_path / "hostile" / "record.json"
    record = RunRecord.load(str(path))
    record.scenario = '=HYPERLINK("http://example.invalid","x")'
    record.save(str(path))
    status, out, _ = _out(capsys, [str(tmp_path), "--format", "csv", "--columns", "scenario"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and rows[0]["scenario"] == "'" + record.scenario
