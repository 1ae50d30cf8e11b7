"""Records from strangers: the report command refuses what is no record in one line, and escapes what it shows."""

import json
import os
import re
import stat

import pytest

from ptycho_callbacks.cli import report_main
from ptycho_callbacks.record import RunRecord, atomic_write_text
from ptycho_callbacks.render import render_report

pytestmark = pytest.mark.core


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content if isinstance(content, bytes) else content.encode("utf-8"))


HOSTILE = {
    "not_utf8": b"\xff\xfe\x00{}",
    "binary": bytes(range(256)) * 4,
    "deep": "[" * 100_000 + "]" * 100_000,
    "history_not_lists": json.dumps({"schema_version": 1, "scenario": "x", "history": {"loss": "abc"}}),
    "events_not_objects": json.dumps({"schema_version": 1, "scenario": "x", "nan_events": [1, 2]}),
    "stage_stats_a_number": json.dumps({"schema_version": 1, "scenario": "x", "stages": [{"stats": 5}]}),
    "a_list": json.dumps([1, 2, 3]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_report_refuses_what_is_no_record_in_one_line(case, tmp_path, capsys):
    path = str(tmp_path / case / "record.json")
    _write(path, HOSTILE[case])
    assert report_main([str(tmp_path / case)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ptycho-callbacks report: error: ") and path in err, err
    assert "Traceback" not in err


def test_text_from_a_record_is_inert_in_the_report():
    record = RunRecord(scenario="evil|<script>alert(1)</script>\n# Injected heading",
                       config={"spec_refs": {"loss": "[click](javascript:alert(1))"}})
    record.add_finding("warning", "x|y", "see [here](javascript:alert(2)) <img src=x onerror=alert(3)>\n## More")
    record.nan_events.append({"epoch": 0, "batch": 1, "step": 2, "phase": "train", "components": ["a|b`c"],
                              "values": {"a|b`c": float("nan")}, "last_finite": {}, "weights_restored": False,
                              "nonfinite_weights": []})
    report = render_report(record)
    assert "<script>" not in report and "<img" not in report
    assert not re.search(r"(?<!\\)\]\(javascript:", report), "a link Markdown would follow"
    assert not any(line.startswith(("# Injected", "## More")) for line in report.splitlines())
    tables, block = [], []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) >= 2
    for table in tables:  # a `|` in a value would add a column to its row
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table}
        assert len(widths) == 1, table
    assert "&lt;script&gt;" in report  # still there to read


def test_record_and_report_files_follow_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        RunRecord(scenario="a").save(tmp_path / "record.json")
    finally:
        os.umask(old)
    for name in ("report.md", "record.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
