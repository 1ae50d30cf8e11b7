"""The committed benchmarks still run and report what the README quotes (tiny settings; no timing is asserted)."""

import importlib
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _run(script, *args):
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args, "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _module(name):
    """benchmarks/<name>.py imported as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.mark.slow
def test_overhead_benchmark_reports_every_part_it_is_asked_for():
    result = _run("overhead.py", "--N", "16", "--n-filters", "4", "--n-scan", "5", "--epochs", "2", "--steps", "2",
                  "--warmup", "1", "--repeats", "2",
                  "--bootstrap", "50", "--step-traces", "2", "--step-rounds", "3",
                  "--configs", "bare", "keras", "unguarded", "guard", "null")
    configs = {"bare", "keras", "unguarded", "guard", "null"}
    assert set(result["steps_per_second"]) == configs
    assert all(rate > 0 for rate in result["steps_per_second"].values())
    # Every fit took a turn at every batch but the warm-up one, across the epoch boundary.
    assert result["timed_steps"] == {name: 2 * (2 * 2 - 1) for name in configs}
    assert result["time_ratio_vs_bare"]["bare"] == 1.0
    assert result["time_ratio_95_interval"]["bare"] == [1.0, 1.0]
    for name in ("keras", "guard", "null"):
        low, high = result["time_ratio_95_interval"][name]
        assert 0 < low <= high and math.isfinite(high)
    # Against Keras's pair: each config's ratio to bare over the pair's, with an interval of its own.
    against_pair = result["time_ratio_vs_keras"]
    assert set(against_pair) == {"unguarded", "guard", "null"}
    for name, ratio in against_pair.items():
        ratios = result["time_ratio_vs_bare"]
        assert math.isclose(ratio, ratios[name] / ratios["keras"])
        low, high = result["time_ratio_vs_keras_95_interval"][name]
        assert 0 < low <= high and math.isfinite(high)
    # The guard's hooks run between the markers; bare and null, a second bare model, have none.
    hooks = result["hook_ms_per_step"]
    assert hooks["guard"] > max(hooks["bare"], hooks["null"])
    assert hooks["unguarded"] > max(hooks["bare"], hooks["null"])  # the suite's other callbacks
    assert set(result["cpu_ms_per_step"]) == configs and all(ms > 0 for ms in result["cpu_ms_per_step"].values())
    # In place, the one guarded config's train function ran against Keras's own, one call a round, in each trace.
    in_step = result["in_step"]
    assert (in_step["traces"], in_step["rounds"]) == (2, 3)
    assert in_step["keras_step_ms"] > 0 and in_step["page_faults_per_step"] >= 0
    assert set(in_step["step_ratio_vs_keras"]) == {"guard"}
    low, high = in_step["step_ratio_95_interval"]["guard"]
    assert 0 < low <= in_step["step_ratio_vs_keras"]["guard"] <= high and math.isfinite(high)
    added = in_step["added_ms_per_step"]
    assert math.isclose(added["guard"], (in_step["step_ratio_vs_keras"]["guard"] - 1) * in_step["keras_step_ms"])
    # The parts ratio is the bare step plus what the config's hooks and its in-place step cost add to it.
    parts, bare_ms = result["parts_ratio_vs_bare"], result["step_ms"]["bare"]
    assert parts["bare"] == 1.0
    assert math.isclose(parts["null"], 1 + (hooks["null"] - hooks["bare"]) / bare_ms)
    assert math.isclose(parts["guard"], 1 + (hooks["guard"] - hooks["bare"] + added["guard"]) / bare_ms)
    # The script ran itself again with malloc keeping freed memory, and counted page faults per turn.
    if sys.platform.startswith("linux"):
        assert result["malloc"] == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(10 ** 12)}
    assert set(result["page_faults_per_step"]) == configs
    assert all(faults >= 0 for faults in result["page_faults_per_step"].values())


@pytest.mark.keras
def test_lock_step_rounds_give_each_fit_one_turn_and_survive_a_fit_that_ends_early():
    Baton = _module("overhead").Baton
    names, turns = ["a", "b", "c"], {"a": 4, "b": 1, "c": 4}
    baton, order = Baton(names), []

    def fit(name):
        for _ in range(turns[name]):
            baton.take(name)
            order.append(name)
            baton.pass_on(name)
        baton.leave(name)

    threads = [threading.Thread(target=fit, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a fit waits for a turn that never comes"
    # Round 0 gives each a turn; b, gone after it, is skipped in the three rounds after.
    assert sorted(order[:3]) == names
    assert all(sorted(order[i:i + 2]) == ["a", "c"] for i in range(3, 9, 2)) and len(order) == 9


@pytest.mark.keras
def test_models_rotate_so_that_every_config_has_every_model_once_in_as_many_repeats():
    models_of_repeat = _module("overhead").models_of_repeat
    configs, models = ["bare", "keras", "suite"], ["m0", "m1", "m2"]
    repeats = [models_of_repeat(configs, models, repeat) for repeat in range(len(configs))]
    for assigned in repeats:
        assert sorted(assigned.values()) == models  # no model serves two configs in one repeat
    for name in configs:
        assert sorted(assigned[name] for assigned in repeats) == models
    assert repeats[0]["bare"] != repeats[1]["bare"]


@pytest.mark.keras
def test_bootstrap_draws_whole_repeats_so_that_a_repeat_s_own_speed_widens_the_interval():
    overhead = _module("overhead")
    # Within each repeat every turn took the same time; the config ran 10% slower than bare in repeat 1 only.
    bare, config = [np.full(4, 1.0), np.full(4, 1.0)], [np.full(4, 1.0), np.full(4, 1.1)]
    generator = np.random.default_rng(1)
    ratios = []
    for _ in range(200):
        picks = overhead.bootstrap_picks(generator, [4, 4])
        assert all(len(turns) == 4 and 0 <= turns.min() and turns.max() < 4 for _, turns in picks)
        ratios.append(overhead.median_rates(bare, picks) / overhead.median_rates(config, picks))
    # Drawing turns alone would give the two-repeat ratio every time; drawing repeats gives each repeat alone too.
    assert math.isclose(min(ratios), 1.0) and math.isclose(max(ratios), 1.1)
    whole = overhead.median_rates(bare) / overhead.median_rates(config)
    assert 1.0 < whole < 1.1


@pytest.mark.keras
def test_parts_ratio_leaves_out_a_guarded_config_whose_step_was_not_compared_in_place():
    parts_ratios = _module("overhead").parts_ratios
    result = {"step_ms": {"bare": 100.0}, "hook_ms_per_step": {"bare": 0.0, "keras": 4.0, "guard": 1.0}}
    parts = parts_ratios(result)  # --step-rounds 0: the guard's hooks alone would understate it
    assert set(parts) == {"bare", "keras"} and math.isclose(parts["keras"], 1.04)
    result["in_step"] = {"added_ms_per_step": {"guard": 2.0}}
    assert math.isclose(parts_ratios(result)["guard"], 1.03)


@pytest.mark.slow
def test_report_path_benchmark_times_statistics_and_rendering():
    result = _run("report_path.py", "--repeats", "1", "--object-size", "64", "--stage-shape", "8", "16", "16", "1")
    assert result["seconds"]["total"] > 0
    assert result["under_budget"] is True


@pytest.mark.slow
def test_rows_benchmark_times_both_paths_of_a_flush_for_each_width_asked():
    result = _run("rows.py", "--rows", "4", "--columns", "3", "1", "--repeats", "2", "--flushes", "1",
                  "--bootstrap", "20")
    assert [(entry["rows"], entry["columns"]) for entry in result] == [(4, 3), (4, 1)]
    for entry in result:
        assert entry["current_ms"] > 0 and entry["per_value_ms"] > 0
        low, high = entry["ratio_interval"]
        assert low <= entry["ratio"] <= high


@pytest.mark.slow
def test_hooks_benchmark_times_every_hook_of_every_callback_of_the_suite():
    result = _run("hooks.py", "--N", "16", "--steps", "3", "--epochs", "3")
    timed = {(entry["callback"], entry["hook"]): entry for entry in result["hooks"]}
    callbacks = {"NaNGuard", "IntensityScaleMonitor", "LossComponents", "SummaryReport"}
    assert {name for name, _ in timed} == callbacks
    for name in callbacks:
        assert timed[(name, "on_train_batch_end")]["calls"] == 2 * 3  # the first epoch is left out
        assert timed[(name, "on_epoch_end")]["calls"] == 2
        assert "last_tenth_mean_ms" in timed[(name, "on_epoch_end")]
    # The guard's batch hook reads the step's verdict each batch: it cannot take no time.
    assert timed[("NaNGuard", "on_train_batch_end")]["median_ms"] > 0
    assert result["keras_dispatch_us_per_batch"] > 0  # Keras's own part, timed apart


@pytest.mark.slow
def test_targets_driver_runs_every_part_under_the_keras_version_asked_and_reads_each_against_its_target():
    # One version keeps CI short; each runs in processes of its own, under the Keras it names.
    done = _run("overhead.py", "--targets", "--quick", "--keras", "tf_keras")
    assert [(entry["keras"], entry["script"]) for entry in done] == [("tf_keras", "overhead.py"),
                                                                     ("tf_keras", "memory.py")]
    assert all("error" not in entry for entry in done), [entry.get("error") for entry in done]
    assert all(entry["result"]["keras"].startswith("2.") for entry in done if entry["script"] == "overhead.py")
    for entry in done:
        measures = [row["measure"] for row in entry["rows"]]
        if entry["script"] == "overhead.py":
            assert measures == ["steady step, suite / bare", "fixed cost per fit, ms", "first trace, guarded / Keras"]
            result = entry["result"]
            fixed = result["fixed_cost"]
            # The parts of the suite's fixed cost, each paired with bare's, add up to it.
            assert math.isclose(sum(fixed["added_ms_by_part"].values()), fixed["added_ms_per_fit"], abs_tol=1e-6)
            trace = result["first_trace"]
            assert set(trace["trace_seconds"]) == {"keras", "guarded"} and trace["repeats"] == 2
            assert math.isclose(trace["trace_ratio"],
                                trace["trace_seconds"]["guarded"] / trace["trace_seconds"]["keras"])
            # The trace splits into the graph's build and its first run, and the guard's check adds ops to it.
            for name in ("keras", "guarded"):
                parts = sum(trace["parts"][part]["seconds"][name] for part in ("python", "first_run"))
                assert math.isclose(parts, trace["trace_seconds"][name])
            assert trace["graph_ops"]["guarded"] > trace["graph_ops"]["keras"] > 0
        else:
            assert measures == ["weight snapshot while training, MB", "weight snapshot after fit, bytes",
                                "peak RSS, suite - bare, MB"]
            result = entry["result"]
            # The snapshot was read while the fit ran, against the trainable variables (log_scale included,
            # which Keras 3 does not track), and again after it; what the target says of them is the table's.
            assert 0 < result["snapshot_bytes_during_fit"] and 0 < result["trainable_bytes"]
            assert 0 <= result["snapshot_bytes_after_fit"] < result["snapshot_bytes_during_fit"]
            assert result["configs"]["bare"]["device_peak_mb"] is None  # no GPU in CI
        for row in entry["rows"]:
            assert row["verdict"] in ("met", "not met", "not resolved", "-")
            if row["interval"] is not None:
                low, high = row["interval"]
                assert low <= high and math.isfinite(low) and math.isfinite(high)


@pytest.mark.core
def test_a_verdict_is_met_only_when_the_whole_interval_is_within_the_target_and_unresolved_when_it_straddles():
    verdict = _module("intervals").verdict
    assert verdict(0.99, 1.02, 1.03) == "met"
    assert verdict(1.031, 1.05, 1.03) == "not met"
    assert verdict(1.01, 1.05, 1.03) == "not resolved"


@pytest.mark.core
def test_paired_interval_draws_whole_repetitions_so_that_a_difference_that_never_varies_has_no_width():
    paired_interval = _module("intervals").paired_interval
    # The machine's speed moves both configs of a repetition alike; their difference is always 5.
    bare = np.array([100.0, 140.0, 90.0, 180.0, 120.0])
    suite = bare + 5
    low, high = paired_interval(lambda b, s: (s - b).mean(), bare, suite, resamples=200)
    assert math.isclose(low, 5) and math.isclose(high, 5)
    # Drawn apart, the same figures would give an interval as wide as the speed's swings.
    low, high = paired_interval(np.mean, suite, resamples=200)
    assert high - low > 20


@pytest.mark.core
def test_targets_table_reads_each_part_against_issue_23s_bounds():
    targets = _module("targets")
    overhead = {
        "time_ratio_vs_bare": {"bare": 1.0, "suite": 1.02, "null": 1.0},
        "time_ratio_95_interval": {"bare": [1.0, 1.0], "suite": [1.01, 1.04], "null": [0.99, 1.01]},
        "step_ms": {"bare": 5.0}, "hook_ms_per_step": {"suite": 0.1},
        "fixed_cost": {"added_ms_per_fit": 30.0, "added_ms_95_interval": [20.0, 45.0],
                       "added_ms_by_part": {"train_end": 25.0, "setup": 5.0}, "background_ms_per_fit": 900.0},
        "first_trace": {"trace_ratio": 1.2, "trace_ratio_95_interval": [1.15, 1.3], "added_seconds": 0.2,
                        "added_seconds_95_interval": [0.15, 0.3], "trace_seconds": {"keras": 1.0, "guarded": 1.2}},
    }
    rows = {row["measure"]: row for row in targets.overhead_rows(overhead)}
    assert rows["steady step, suite / bare"]["verdict"] == "not resolved"  # 1.01-1.04 straddles 1.03
    assert rows["fixed cost per fit, ms"]["verdict"] == "met"
    assert rows["first trace, guarded / Keras"]["verdict"] == "not met"
    memory = {"trainable_bytes": 1000, "snapshot_bytes_during_fit": 1000, "snapshot_bytes_after_fit": 4,
              "suite_adds_peak_mb": 50.0, "suite_adds_peak_mb_95_interval": [45.0, 55.0],
              "configs": {"bare": {"peak_rss_mb": 600.0, "device_peak_mb": None},
                          "suite": {"peak_rss_mb": 650.0, "device_peak_mb": None}}}
    rows = {row["measure"]: row for row in targets.memory_rows(memory)}
    assert rows["weight snapshot while training, MB"]["verdict"] == "met"  # one copy, no more
    assert rows["weight snapshot after fit, bytes"]["verdict"] == "not met"  # "nothing" means 0 bytes
    assert "device n/a (CPU)" in rows["peak RSS, suite - bare, MB"]["detail"]


@pytest.mark.keras
def test_a_fit_s_parts_add_up_to_its_wall_time_less_its_steady_steps():
    fixed_cost = _module("fixed_cost")

    class Model:  # calls the hooks as Keras's fit does, and records nothing else
        def fit(self, dataset, epochs, steps_per_epoch, verbose, callbacks):
            for callback in callbacks:
                callback.on_train_begin()
            for step in range(steps_per_epoch):
                for callback in callbacks:
                    callback.on_train_batch_begin(step)
                time.sleep(0.002 if step else 0.01)
            for hook in ("on_epoch_end", "on_train_end"):
                for callback in callbacks:
                    getattr(callback, hook)(*([0] if hook == "on_epoch_end" else []))

    parts = fixed_cost.timed_fit(Model(), None, steps=6)
    assert set(parts) == {*fixed_cost.PARTS, "steady_step", "wall", "background"}
    assert math.isclose(sum(parts[part] for part in fixed_cost.PARTS), parts["wall"] - 6 * parts["steady_step"])
