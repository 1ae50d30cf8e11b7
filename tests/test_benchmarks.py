"""The committed benchmarks still run and report what the README quotes (tiny settings; no timing is asserted)."""

import json
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _run(script, *args):
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args, "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _overhead_module():
    """benchmarks/overhead.py imported as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        import overhead
    finally:
        sys.path.remove(BENCHMARKS)
    return overhead


@pytest.mark.slow
def test_overhead_benchmark_reports_every_part_it_is_asked_for():
    result = _run("overhead.py", "--epochs", "2", "--steps", "2", "--warmup", "1", "--repeats", "2",
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
    Baton = _overhead_module().Baton
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
    models_of_repeat = _overhead_module().models_of_repeat
    configs, models = ["bare", "keras", "suite"], ["m0", "m1", "m2"]
    repeats = [models_of_repeat(configs, models, repeat) for repeat in range(len(configs))]
    for assigned in repeats:
        assert sorted(assigned.values()) == models  # no model serves two configs in one repeat
    for name in configs:
        assert sorted(assigned[name] for assigned in repeats) == models
    assert repeats[0]["bare"] != repeats[1]["bare"]


@pytest.mark.keras
def test_bootstrap_draws_whole_repeats_so_that_a_repeat_s_own_speed_widens_the_interval():
    overhead = _overhead_module()
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
    parts_ratios = _overhead_module().parts_ratios
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
def test_hooks_benchmark_times_every_hook_of_every_callback_of_the_suite():
    result = _run("hooks.py", "--N", "16", "--steps", "3", "--epochs", "3")
    timed = {(entry["callback"], entry["hook"]): entry for entry in result["hooks"]}
    callbacks = {"NaNGuard", "IntensityScaleMonitor", "LossComponents", "SummaryReport"}
    assert {name for name, _ in timed} == callbacks
    for name in callbacks:
        assert timed[(name, "on_train_batch_end")]["calls"] == 2 * 3  # the first epoch is left out
        assert timed[(name, "on_epoch_end")]["calls"] == 2
        assert "last_tenth_mean_ms" in timed[(name, "on_epoch_end")]
    # The guard's batch hook makes a compiled call each batch: it cannot take no time.
    assert timed[("NaNGuard", "on_train_batch_end")]["median_ms"] > 0
