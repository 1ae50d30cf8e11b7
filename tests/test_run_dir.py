"""Tests of resolve_run_dir: a new run never lands on a directory that already holds one."""

import multiprocessing
import os
import time

import pytest

from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.run_dir import CLAIM_FILE, claim_run_dir, resolve_run_dir

pytestmark = pytest.mark.core


def _hold_run(directory, files=("record.json", "report.md")):
    directory.mkdir(parents=True, exist_ok=True)
    if "record.json" in files:
        RunRecord(scenario=directory.name).save(directory / "record.json")
    if "report.md" in files:
        (directory / "report.md").write_text("# Intensity Bias Summary\n")
    return directory


def _snapshot(root):
    return {path: open(path, "rb").read()
            for path in (os.path.join(d, f) for d, _, names in os.walk(root) for f in names)}


@pytest.mark.parametrize("prepare", ["missing", "empty", "other files"])
def test_a_directory_without_a_run_is_used_as_is(tmp_path, prepare):
    run = tmp_path / "runs" / "gs2_base"
    if prepare != "missing":
        run.mkdir(parents=True)
    if prepare == "other files":
        (run / "ptycho").mkdir()
        (run / "notes.txt").write_text("keep")
    assert resolve_run_dir(run) == (str(run), None)
    assert resolve_run_dir(str(run) + os.sep).path == str(run)
    assert run.exists() is (prepare != "missing")  # nothing created


@pytest.mark.parametrize("files", [("record.json",), ("report.md",), ("record.json", "report.md")])
def test_a_directory_holding_a_run_gives_the_first_free_sibling(tmp_path, files):
    run = _hold_run(tmp_path / "gs2_base", files)
    before = _snapshot(tmp_path)
    path, note = resolve_run_dir(run)
    assert path == f"{run}-2"
    assert not os.path.exists(path)
    assert note.count("\n") == 0
    assert str(run) in note and path in note and "overwrite=True" in note
    for name in files:
        assert name in note
    assert _snapshot(tmp_path) == before  # nothing overwritten, nothing created


def test_siblings_holding_runs_or_being_files_are_skipped(tmp_path):
    run = _hold_run(tmp_path / "a")
    _hold_run(tmp_path / "a-2", ("record.json",))
    (tmp_path / "a-3").write_text("a file, not a directory")
    (tmp_path / "a-4").mkdir()  # an empty directory is free
    assert resolve_run_dir(run).path == str(tmp_path / "a-4")
    _hold_run(tmp_path / "a-4", ("report.md",))
    assert resolve_run_dir(run).path == str(tmp_path / "a-5")


def test_three_runs_in_a_row_each_get_their_own_directory(tmp_path):
    asked = tmp_path / "gs2"
    used = []
    for _ in range(3):
        path, _ = resolve_run_dir(asked)
        _hold_run(tmp_path / os.path.basename(path))
        used.append(os.path.basename(path))
    assert used == ["gs2", "gs2-2", "gs2-3"]


def test_overwrite_returns_the_directory_itself_and_says_so(tmp_path):
    run = _hold_run(tmp_path / "gs2_base")
    path, note = resolve_run_dir(run, overwrite=True)
    assert path == str(run)
    assert "overwriting" in note and "record.json and report.md" in note
    assert resolve_run_dir(tmp_path / "fresh", overwrite=True) == (str(tmp_path / "fresh"), None)


def test_a_file_where_the_directory_should_be_is_refused(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        resolve_run_dir(target)


def _claim_in_a_process(args):
    from ptycho_callbacks.run_dir import claim_run_dir

    path, start = args
    while time.time() < start:  # every process asks at the same moment
        pass
    return claim_run_dir(path).path


def test_processes_starting_together_on_one_directory_get_one_each(tmp_path):
    run = str(tmp_path / "gs2_base")
    workers = 6
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        start = time.time() + 3.0
        paths = pool.map(_claim_in_a_process, [(run, start)] * workers)
    assert sorted(paths) == sorted([run] + [f"{run}-{n}" for n in range(2, workers + 1)])
    assert all(os.path.exists(os.path.join(path, CLAIM_FILE)) for path in paths)


def test_a_claimed_directory_counts_as_holding_a_run_and_overwrite_takes_it_anyway(tmp_path):
    run = str(tmp_path / "a")
    assert claim_run_dir(run) == (run, None)
    again = claim_run_dir(run)
    assert again.path == run + "-2" and "ptycho_run.claim" in again.note
    assert claim_run_dir(run, overwrite=True).path == run
