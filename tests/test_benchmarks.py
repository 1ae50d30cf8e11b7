"""The committed benchmarks still run and report what the README quotes (tiny settings; no timing is asserted)."""

import json
import math
import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _run(script, *args):
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args, "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_overhead_benchmark_reports_every_part_it_is_asked_for():
    result = _run("overhead.py", "--steps", "2", "--warmup", "1", "--repeats", "1", "--op-blocks", "1",
                  "--op-calls", "3", "--configs", "bare", "guard")
    configs = {"bare", "guard"}
    assert set(result["steps_per_second"]) == configs
    assert all(rate > 0 for rate in result["steps_per_second"].values())
    assert result["time_ratio_vs_bare"]["bare"] == 1.0
    # The guard's hooks run between the markers, bare has none.
    assert result["hook_ms_per_step"]["guard"] > result["hook_ms_per_step"]["bare"]
    assert set(result["in_step"]["added_ms_per_step"]) == {"guard", "forensics", "suite"}
    assert all(math.isfinite(value) for value in result["estimated_time_ratio"].values())
    assert result["estimated_time_ratio"]["bare"] == 1.0


def test_report_path_benchmark_times_statistics_and_rendering():
    result = _run("report_path.py", "--repeats", "1", "--object-size", "64", "--stage-shape", "8", "16", "16", "1")
    assert result["seconds"]["total"] > 0
    assert result["under_budget"] is True
