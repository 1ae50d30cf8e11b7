"""Time of the report path: every statistic the callbacks compute, then the Markdown report.

For a 512x512 complex object (prediction and truth) and six data-path stages
of 64x64x64x4 = 1,048,576 float32 pixels each (the reference report's
container shape), one repetition computes what `StageStatistics` and the
report compute at an evaluation and at the end of a run:
  stages      `array_stats` of every stage, `e_batch_intensity`, the stage
              ratios, the normalization invariant and the largest drop
  prediction  |pred|, |truth|, angles, `scaling_stats`, `amplitude_bias`,
              `phase_bias` of the object
  scale/loss  `compare_scales`, `log_scale_state`, `loss_composition` of a
              500-epoch history
  render      `render_report` of the filled record
and prints the median over repetitions, against a baseline measured in the
same run: one `np.mean` pass over the same arrays (this machine is shared and
noisy: compare the ratio, not absolute times). numpy only, no TensorFlow.

    python benchmarks/report_path.py --repeats 7
    python benchmarks/report_path.py --json
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

from ptycho_callbacks import stats
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.render import render_report

BUDGET_SECONDS = 1.0
STAGE_NAMES = ("raw_diffraction", "grouped_diffraction", "grouped_X_full", "container_X", "prediction", "truth")
LOSS_NAMES = ("trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss")


def make_inputs(object_size, stage_shape, seed=0):
    """Random stages (float32) and a complex64 object pair with a known 2x amplitude bias."""
    rng = np.random.default_rng(seed)
    stages = {name: (gain * rng.gamma(0.3, 1.0, stage_shape)).astype(np.float32)
              for name, gain in zip(STAGE_NAMES, (1.0, 1.01, 0.577, 0.577, 0.4, 0.6))}
    amplitude = rng.uniform(0.2, 1.0, (object_size, object_size))
    phase = rng.uniform(-np.pi, np.pi, (object_size, object_size))
    truth = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    pred = (0.5 * amplitude * np.exp(1j * (phase + rng.normal(0, 0.1, phase.shape)))).astype(np.complex64)
    history = {name: list(rng.normal(1.0, 0.1, 500)) for name in ("loss",) + LOSS_NAMES}
    return stages, pred, truth, history


def compute_statistics(stages, pred, truth, history):
    """The statistics of one evaluation plus the end of the run, as the callbacks compute them."""
    stage_stats = {name: stats.array_stats(array) for name, array in stages.items()}
    means = [(name, s["mean"]) for name, s in stage_stats.items()]
    transitions = stats.stage_ratios(means)
    stats.invariant_check(transitions)
    stats.largest_drop(means)
    e_batch = stats.e_batch_intensity(stages["container_X"])
    pred_amp, truth_amp = np.abs(pred), np.abs(truth)
    prediction = {
        "scaling": stats.scaling_stats(pred_amp, truth_amp),
        "amplitude_bias": stats.amplitude_bias(pred_amp, truth_amp),
        "phase_bias": stats.phase_bias(np.angle(pred), np.angle(truth)),
    }
    config = {"nphotons": 1e9, "N": 64, "intensity_scale": 988.212, "e_batch_intensity": e_batch,
              "loss_weights": dict(zip(LOSS_NAMES, (0.0, 1.0, 1.0)))}
    stats.compare_scales(config["nphotons"], config["N"], e_batch)
    stats.log_scale_state(6.9, config["intensity_scale"], True, True)
    stats.loss_composition(history, config["loss_weights"])
    return RunRecord(
        scenario="benchmark", status="completed", config=config, history=history,
        log_scale={"found": True, "variable_name": "log_scale", "initial": 6.896, "final": 6.9,
                   "declared_trainable": True, "in_trainable_variables": True, "moved": True, "shared": True},
        stages=[{"name": name, "label": name, "source": "benchmark", "stats": s} for name, s in stage_stats.items()],
        prediction=prediction,
    )


def baseline(stages, pred, truth):
    """One np.mean pass over the same arrays."""
    for array in list(stages.values()) + [pred, truth]:
        np.mean(array)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def measure(args):
    stage_shape = tuple(args.stage_shape)
    stages, pred, truth, history = make_inputs(args.object_size, stage_shape)
    times = {"statistics": [], "render": [], "total": [], "baseline": []}
    report_chars = 0
    for repeat in range(args.repeats + 1):  # repeat 0 warms caches up, untimed
        baseline_time, _ = timed(baseline, stages, pred, truth)
        statistics_time, record = timed(compute_statistics, stages, pred, truth, history)
        render_time, report = timed(render_report, [record])
        if repeat:
            times["baseline"].append(baseline_time)
            times["statistics"].append(statistics_time)
            times["render"].append(render_time)
            times["total"].append(statistics_time + render_time)
        report_chars = len(report)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seconds": medians,
        "ratio_total_vs_baseline": medians["total"] / medians["baseline"],
        "under_budget": medians["total"] < BUDGET_SECONDS,
        "budget_seconds": BUDGET_SECONDS,
        "object_shape": [args.object_size, args.object_size],
        "stage_shape": list(stage_shape),
        "stage_pixels": int(np.prod(stage_shape)),
        "stages": len(stages),
        "report_chars": report_chars,
        "repeats": args.repeats,
        "numpy": np.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median reported)")
    parser.add_argument("--object-size", type=int, default=512, help="side of the square complex object")
    parser.add_argument("--stage-shape", type=int, nargs="+", default=[64, 64, 64, 4],
                        help="shape of every stage array (default: 64 64 64 4 = 1,048,576 pixels)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    seconds = result["seconds"]
    print(f"{'part':<11} {'median s':>9} {'ratio vs baseline':>18}")
    for part in ("statistics", "render", "total", "baseline"):
        print(f"{part:<11} {seconds[part]:>9.4f} {seconds[part] / seconds['baseline']:>18.1f}")
    verdict = "under" if result["under_budget"] else "OVER"
    print(f"report path: {seconds['total']:.3f} s, {verdict} the {BUDGET_SECONDS:g} s budget "
          f"({result['repeats']} repetitions; object {args.object_size}x{args.object_size} complex64, "
          f"{result['stages']} stages of {result['stage_pixels']:,} float32 pixels; baseline = one np.mean "
          "pass over the same arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
