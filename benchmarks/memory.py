"""Host memory of the callbacks: peak RSS of a training run, bare and with the full suite.

Each configuration runs in its own subprocess (so their peaks do not mix),
one after the other:
  bare   model.fit of the stand-in PtychoPINN model, no callbacks
  suite  the same with ptycho_callbacks.default_callbacks: every callback on,
         with the simulation's stages, a prediction layer, probe inputs and
         the ground-truth object
Each process reports its peak RSS (VmHWM), its RSS before training and at
the end of every epoch (VmRSS). The parent prints the peak each configuration
reaches (median over `--repeats` processes), what the suite adds, and how RSS
moves after a warm-up: the median RSS of the last `--window` epochs minus
that of the first `--window` epochs after the warm-up (TensorFlow's allocator
makes single samples jump by tens of MB), and the least-squares slope per
epoch, next to the size of the suite's record (the per-epoch history it
keeps on purpose).

Issue 23 also bounds the NaN guard's device-side snapshot of the weights:
at most one copy of the trainable weights while training, nothing after
fit. The suite's process reads its size (`guarded.snapshot_bytes`) at the
first epoch end and after fit, beside the bytes of the trainable variables.
Device memory (TensorFlow's peak) is reported where a GPU exists; on CPU it
is all in the RSS.

    python benchmarks/memory.py --epochs 100
    python benchmarks/memory.py --json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import stand_in
from intervals import paired_interval

CONFIGS = ("bare", "suite")


def status_mb(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def train(config, args):
    """Runs one configuration in this process; returns its measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from guarded import nan_guard, snapshot_bytes, step_guard_of, trainable_bytes
    from ptycho_callbacks import Probe, default_callbacks
    from ptycho_callbacks._keras import keras

    class Sampler(keras.callbacks.Callback):
        """RSS at every epoch end; at the first, the guard's snapshot as it is while training."""

        def __init__(self, guard):
            super().__init__()
            self.rss = []
            self.guard, self.step_guard, self.snapshot_bytes = guard, None, 0

        def on_epoch_end(self, epoch, logs=None):
            self.rss.append(status_mb("VmRSS"))
            if self.guard is not None and self.step_guard is None:
                self.step_guard = step_guard_of(self.guard)
                self.snapshot_bytes = snapshot_bytes(self.step_guard)

    data = stand_in.simulated_data(args)
    model = stand_in.model(args, data)
    dataset = stand_in.dataset(data).batch(args.batch_size).cache().repeat()
    probe = {key: value[:args.probe] for key, value in data.model_inputs().items()}
    gpu = "GPU:0" if tf.config.list_physical_devices("GPU") else None
    if gpu:
        tf.config.experimental.reset_memory_stats(gpu)
    with tempfile.TemporaryDirectory() as run_dir:
        rss_before = status_mb("VmRSS")
        callbacks = []
        if config == "suite":
            stages = data.stages() + [
                {"name": "prediction", "label": "Prediction", "layer": "pred_amplitude"},
                {"name": "truth", "label": "Truth", "array": data.truth_diffraction[:args.probe]},
            ]
            callbacks = default_callbacks(
                model, run_dir, config={"nphotons": data.nphotons, "N": data.N, "gridsize": data.gridsize},
                stages=stages, probe=Probe(probe, truth=data.truth_object[:args.probe]), verbose=0)
        sampler = Sampler(nan_guard(callbacks) if callbacks else None)
        model.fit(dataset, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, shuffle=False, verbose=0,
                  callbacks=callbacks + [sampler])
        if callbacks:
            callbacks[0].run.wait()  # the figures, drawn off the training thread, are part of the suite's memory
        record_path = os.path.join(run_dir, "record.json")
        record_kb = os.path.getsize(record_path) / 1024.0 if os.path.exists(record_path) else 0.0
    return {"config": config, "peak_rss_mb": status_mb("VmHWM"), "rss_before_fit_mb": rss_before,
            "rss_per_epoch_mb": sampler.rss, "record_kb": record_kb,
            "device_peak_mb": tf.config.experimental.get_memory_info(gpu)["peak"] / 2 ** 20 if gpu else None,
            "trainable_bytes": trainable_bytes(model), "snapshot_bytes_during_fit": sampler.snapshot_bytes,
            "snapshot_bytes_after_fit": snapshot_bytes(sampler.step_guard) if sampler.step_guard else 0}


def _slope(values):
    """Least-squares slope of `values` against their index."""
    count = len(values)
    if count < 2:
        return 0.0
    mean_x, mean_y = (count - 1) / 2.0, sum(values) / count
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return covariance / sum((x - mean_x) ** 2 for x in range(count))


def summarize(runs, warmup, window):
    """Peaks, what the suite adds, and RSS growth after `warmup` epochs (`runs`: config -> repeats)."""
    result = {"configs": {}}
    for name, repeats in runs.items():
        series = [statistics.median(values) for values in zip(*(run["rss_per_epoch_mb"] for run in repeats))]
        after = series[warmup:]
        early, late = statistics.median(after[:window]), statistics.median(after[-window:])
        result["configs"][name] = {
            "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in repeats),
            "peak_rss_mb_each": [run["peak_rss_mb"] for run in repeats],
            "rss_before_fit_mb": statistics.median(run["rss_before_fit_mb"] for run in repeats),
            "rss_early_mb": early,
            "rss_late_mb": late,
            "growth_after_warmup_mb": late - early,
            "slope_kb_per_epoch": 1024.0 * _slope(after),
            "record_kb": statistics.median(run["record_kb"] for run in repeats),
            "rss_per_epoch_mb": series,
            "device_peak_mb": (None if repeats[0]["device_peak_mb"] is None
                               else statistics.median(run["device_peak_mb"] for run in repeats)),
        }
    bare, suite = result["configs"]["bare"], result["configs"]["suite"]
    epochs = len(suite["rss_per_epoch_mb"])
    result["suite_adds_peak_mb"] = suite["peak_rss_mb"] - bare["peak_rss_mb"]
    # bare and suite ran one after the other in each repetition: their difference is paired
    added = [s - b for s, b in zip(suite["peak_rss_mb_each"], bare["peak_rss_mb_each"])]
    result["suite_adds_peak_mb_95_interval"] = paired_interval(np.mean, added)
    result["record_kb_per_epoch"] = suite["record_kb"] / epochs
    # The largest of the repetitions: a bound holds for every one of them or it does not hold.
    result["trainable_bytes"] = max(run["trainable_bytes"] for run in runs["suite"])
    for when in ("during_fit", "after_fit"):
        result[f"snapshot_bytes_{when}"] = max(run[f"snapshot_bytes_{when}"] for run in runs["suite"])
    return result


def run_child(config, argv):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", config, *argv],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the {config} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--steps-per-epoch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10, help="epochs before RSS growth is counted")
    parser.add_argument("--window", type=int, default=20, help="epochs whose median RSS is compared")
    parser.add_argument("--repeats", type=int, default=1, help="processes per configuration (median)")
    stand_in.add_arguments(parser)
    parser.add_argument("--probe", type=int, default=4, help="samples in the probe batch")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup or not 1 <= args.window <= (args.epochs - args.warmup) // 2:
        parser.error("need --warmup >= 0 and 1 <= --window <= (--epochs - --warmup) / 2")
    if args.child:
        print(json.dumps(train(args.child, args)))
        return 0
    child_argv = [arg for arg in argv if arg != "--json"]
    runs = {config: [] for config in CONFIGS}
    for _ in range(args.repeats):  # interleaved, so a slow phase of the machine hits both
        for config in CONFIGS:
            runs[config].append(run_child(config, child_argv))
    result = summarize(runs, args.warmup, args.window)
    result.update(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, warmup=args.warmup,
                  window=args.window, repeats=args.repeats, N=args.N, gridsize=args.gridsize,
                  batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'config':<7} {'peak RSS MB':>12} {'RSS early MB':>13} {'RSS late MB':>12} "
          f"{'growth MB':>10} {'slope kB/epoch':>15}")
    for name, run in result["configs"].items():
        print(f"{name:<7} {run['peak_rss_mb']:>12.1f} {run['rss_early_mb']:>13.1f} {run['rss_late_mb']:>12.1f} "
              f"{run['growth_after_warmup_mb']:>10.1f} {run['slope_kb_per_epoch']:>15.1f}")
    suite = result["configs"]["suite"]
    low, high = result["suite_adds_peak_mb_95_interval"]
    print(f"the suite adds {result['suite_adds_peak_mb']:.1f} MB of peak RSS (paired, {low:.1f} to {high:.1f}); from the first to the last "
          f"{args.window} epochs after epoch {args.warmup} its RSS moves {suite['growth_after_warmup_mb']:+.1f} MB "
          f"(bare: {result['configs']['bare']['growth_after_warmup_mb']:+.1f} MB); its record keeps "
          f"{result['record_kb_per_epoch']:.2f} kB of history per epoch "
          f"({args.epochs} epochs, N={args.N}, gridsize {args.gridsize}, batch {args.batch_size}, "
          f"{args.steps_per_epoch} step(s) per epoch, {args.repeats} process(es) per configuration)")
    print(f"the guard's weight snapshot holds {result['snapshot_bytes_during_fit'] / 2 ** 20:.2f} MB while "
          f"training and {result['snapshot_bytes_after_fit'] / 2 ** 20:.2f} MB after fit; one copy of the "
          f"trainable weights is {result['trainable_bytes'] / 2 ** 20:.2f} MB")
    device = {name: run["device_peak_mb"] for name, run in result["configs"].items()}
    print("device memory: n/a on CPU" if device["bare"] is None else
          f"peak device memory: bare {device['bare']:.1f} MB, suite {device['suite']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
