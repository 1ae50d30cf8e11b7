"""The scripts of examples/ run as a user would run them, at a tiny size, and say what they promise."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_examples_train_compare_and_read_runs(tmp_path):
    minimal, pinn = str(tmp_path / "minimal"), str(tmp_path / "gs2")
    assert f"report: {minimal}" in _run("minimal_custom_model.py", "--out", minimal, "--epochs", "1")
    with open(os.path.join(minimal, "record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["status"] == "completed"
    assert set(record["config"]["loss_weights"]) == {"amplitude_loss", "phase_loss"}

    assert f"report: {pinn}" in _run("ptychopinn_style.py", "--out", pinn, "--epochs", "2", "--N", "16")
    with open(os.path.join(pinn, "record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert [stage["name"] for stage in record["stages"]][-2:] == ["prediction", "truth"]
    assert record["prediction"]["amplitude_bias"]["count"] > 0 and record["physics"]

    summary = str(tmp_path / "summary.md")
    _run("compare_runs.py", minimal, pinn, "-o", summary)
    with open(summary, encoding="utf-8") as handle:
        text = handle.read()
    assert "# Scenario comparison" in text and "| minimal |" in text and "| gs2 |" in text

    out = _run("read_record.py", pinn)
    assert out.startswith("gs2: completed, 2 epoch(s)") and "log_scale" in out and "pred_intensity_loss" in out
