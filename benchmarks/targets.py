"""Issue 23's performance targets, each measured under both Keras versions: `overhead.py --targets`.

For Keras 3 and for tf_keras (TF_USE_LEGACY_KERAS=1) in turn, each in
processes of its own, it runs
  overhead.py at the small size (--N 16 --n-filters 16, a bare step of a
      few ms): the steady step (lock-step fits of bare, suite and null),
      the fixed cost per fit and the first trace;
  overhead.py at PtychoPINN's real size (--N 64 --n-filters 64), where the
      target names it: the first trace;
  memory.py at the real size: peak RSS of bare and suite, the guard's
      snapshot against the trainable weights, device memory where a GPU is;
then prints one table: per Keras version and size, each figure with its
95% interval from paired repetitions, its target, and whether the interval
meets it ("met", "not met", or "not resolved" when the interval straddles
the target: this machine's noise cannot tell).

The fixed cost per fit is measured at the small size only: at the real
size a step takes over a second on a 2-core CPU, and the jitter of a few
steps alone is larger than the 50 ms sought. TensorFlow is not loaded in
this process.

    python benchmarks/overhead.py --targets            # about 15-20 minutes on 2 cores
    python benchmarks/overhead.py --targets --quick    # tiny settings: checks that it all runs
"""

import argparse
import json
import os
import subprocess
import sys
import time

from intervals import verdict

HERE = os.path.dirname(os.path.abspath(__file__))

KERAS_VERSIONS = {"Keras 3": False, "tf_keras": True}
"""Name in the table: whether TF_USE_LEGACY_KERAS=1 is set."""

STEADY_RATIO, FIXED_MS, TRACE_RATIO = 1.03, 50.0, 1.10
"""Issue 23's bounds: suite/bare steady step, the suite's fixed cost per fit, guarded/Keras first trace."""

SIZES = {"small": ["--N", "16", "--n-filters", "16"], "real": ["--N", "64", "--n-filters", "64"]}

RUNS = [
    ("small", "overhead.py", ["--parts", "steady", "fixed-cost", "first-trace", "--configs", "bare", "suite", "null",
                              "--steps", "100", "--epochs", "2", "--repeats", "6", "--fits", "30",
                              "--trace-repeats", "6"]),
    ("real", "overhead.py", ["--parts", "first-trace", "--trace-repeats", "6", "--trace-calls", "3"]),
    ("real", "memory.py", ["--epochs", "12", "--warmup", "2", "--window", "4", "--repeats", "2"]),
]
"""(size, script, flags) of the full run, for each Keras version."""

QUICK_SIZES = {"small": ["--N", "16", "--n-filters", "4", "--n-scan", "5"]}

QUICK_RUNS = [
    ("small", "overhead.py", ["--parts", "steady", "fixed-cost", "first-trace", "--configs", "bare", "suite",
                              "--steps", "3", "--epochs", "1", "--warmup", "1", "--repeats", "2",
                              "--step-traces", "1", "--step-rounds", "2", "--fits", "2", "--fit-steps", "4",
                              "--trace-repeats", "2", "--trace-calls", "1", "--bootstrap", "50"]),
    ("small", "memory.py", ["--epochs", "3", "--warmup", "1", "--window", "1"]),
]
"""The same parts at tiny settings (`--quick`): they run, the figures mean nothing."""


def run(script, flags, legacy):
    """`script` with `flags` and --json in a process of its own, under tf_keras when `legacy`: its result."""
    env = {name: value for name, value in os.environ.items() if name != "TF_USE_LEGACY_KERAS"}
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    done = subprocess.run([sys.executable, os.path.join(HERE, script), *flags, "--json"], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _row(measure, figure, interval=None, target=None, verdict_=None, detail="", digits=3):
    """One row of the table; `figure` is a number (shown with `digits` decimals, as its interval) or text."""
    shown = f"{figure:.{digits}f}" if isinstance(figure, float) else figure
    return {"measure": measure, "figure": shown, "interval": interval,
            "interval_text": "" if interval is None else f"{interval[0]:.{digits}f} to {interval[1]:.{digits}f}",
            "target": target, "verdict": verdict_, "detail": detail}


def overhead_rows(result):
    """The table's rows of one overhead.py result: steady step, fixed cost, first trace, as it has them."""
    rows = []
    if "time_ratio_vs_bare" in result:
        low, high = result["time_ratio_95_interval"]["suite"]
        detail = (f"bare step {result['step_ms']['bare']:.1f} ms; suite's hooks "
                  f"{result['hook_ms_per_step']['suite']:.2f} ms/step")
        if "in_step" in result:
            detail += f", in step {result['in_step']['added_ms_per_step']['suite']:+.2f} ms"
        if "null" in result["time_ratio_vs_bare"]:
            null_low, null_high = result["time_ratio_95_interval"]["null"]
            detail += f"; null {result['time_ratio_vs_bare']['null']:.3f} ({null_low:.3f}-{null_high:.3f})"
        rows.append(_row("steady step, suite / bare", result["time_ratio_vs_bare"]["suite"], [low, high],
                         f"<= {STEADY_RATIO}", verdict(low, high, STEADY_RATIO), detail))
    if "fixed_cost" in result:
        fixed = result["fixed_cost"]
        low, high = fixed["added_ms_95_interval"]
        biggest = sorted(fixed["added_ms_by_part"].items(), key=lambda item: -abs(item[1]))[:3]
        detail = ("mostly " + ", ".join(f"{part.replace('_', ' ')} {ms:+.0f}" for part, ms in biggest)
                  + f"; and {fixed['background_ms_per_fit']:.0f} off the training thread")
        rows.append(_row("fixed cost per fit, ms", fixed["added_ms_per_fit"], [low, high], f"<= {FIXED_MS:.0f}",
                         verdict(low, high, FIXED_MS), detail, digits=1))
    if "first_trace" in result:
        trace = result["first_trace"]
        low, high = trace["trace_ratio_95_interval"]
        added_low, added_high = trace["added_seconds_95_interval"]
        detail = (f"{trace['added_seconds']:+.2f} s ({added_low:+.2f} to {added_high:+.2f}) on Keras's "
                  f"{trace['trace_seconds']['keras']:.2f} s")
        rows.append(_row("first trace, guarded / Keras", trace["trace_ratio"], [low, high], f"<= {TRACE_RATIO}",
                         verdict(low, high, TRACE_RATIO), detail))
    return rows


def memory_rows(result):
    """The table's rows of one memory.py result: the snapshot while training and after, and peak memory."""
    mb = 2 ** 20
    trainable, during = (result[key] / mb for key in ("trainable_bytes", "snapshot_bytes_during_fit"))
    configs = result["configs"]
    device = configs["bare"]["device_peak_mb"]
    device = ("device n/a (CPU)" if device is None
              else f"device peak bare {device:.1f} MB, suite {configs['suite']['device_peak_mb']:.1f} MB")
    return [
        _row("weight snapshot while training, MB", during, target=f"<= {trainable:.2f} (one copy)",
             verdict_="met" if result["snapshot_bytes_during_fit"] <= result["trainable_bytes"] else "not met",
             detail=f"{result['snapshot_bytes_during_fit']} bytes, trainable {result['trainable_bytes']}", digits=2),
        _row("weight snapshot after fit, bytes", str(result["snapshot_bytes_after_fit"]), target="0",
             verdict_="met" if result["snapshot_bytes_after_fit"] == 0 else "not met"),
        _row("peak RSS, suite - bare, MB", result["suite_adds_peak_mb"], result["suite_adds_peak_mb_95_interval"],
             "reported", "-", f"bare {configs['bare']['peak_rss_mb']:.0f} MB, suite "
             f"{configs['suite']['peak_rss_mb']:.0f} MB; {device}", digits=1),
    ]


def measure(runs, sizes, versions=tuple(KERAS_VERSIONS)):
    """Every run under each of `versions`: [{keras, size, script, seconds, result or error, rows}]."""
    done = []
    for name in versions:
        legacy = KERAS_VERSIONS[name]
        for size, script, flags in runs:
            print(f"{name}, {size}: {script} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            entry = {"keras": name, "size": size, "script": script, "flags": [*sizes[size], *flags]}
            try:
                entry["result"] = run(script, entry["flags"], legacy)
                entry["rows"] = (overhead_rows if script == "overhead.py" else memory_rows)(entry["result"])
            except RuntimeError as error:  # the other runs still say what they measured
                entry["error"] = str(error)
                entry["rows"] = [_row(f"{script} failed", "-", detail=str(error).strip().splitlines()[-1])]
            entry["seconds"] = time.monotonic() - start
            print(f"  {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
            done.append(entry)
    return done


def print_table(done, sizes):
    print(f"{'Keras':<9} {'size':<6} {'measure':<35} {'figure':>8} {'95% interval':>18} {'target':>20}  "
          f"{'verdict':<13} detail")
    for entry in done:
        for row in entry["rows"]:
            print(f"{entry['keras']:<9} {entry['size']:<6} {row['measure']:<35} {row['figure']:>8} "
                  f"{row['interval_text']:>18} {row['target'] or '':>20}  {row['verdict'] or '':<13} {row['detail']}")
    versions = {entry["keras"]: f"{entry['keras']} {entry['result']['keras']}" for entry in done
                if "keras" in entry.get("result", {})}
    minutes = {name: sum(entry["seconds"] for entry in done if entry["keras"] == name) / 60 for name in versions}
    print(f"({', '.join(f'{versions[name]} in {minutes[name]:.1f} min' for name in versions)}; sizes: "
          + "; ".join(f"{size} {' '.join(flags)}" for size, flags in sizes.items()) + ")")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="overhead.py --targets", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that every part runs")
    parser.add_argument("--json", action="store_true", help="print the runs and the table's rows as JSON")
    parser.add_argument("--keras", nargs="+", choices=list(KERAS_VERSIONS), default=list(KERAS_VERSIONS),
                        help="the Keras versions to measure (default: both)")
    args = parser.parse_args(argv)
    runs, sizes = (QUICK_RUNS, QUICK_SIZES) if args.quick else (RUNS, SIZES)
    done = measure(runs, sizes, args.keras)
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        print_table(done, sizes)
    return 0 if all("error" not in entry for entry in done) else 1
