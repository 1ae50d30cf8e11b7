"""Overhead of the callbacks: steps per second of the stand-in model, with and without them.

Trains the stand-in PtychoPINN model (N=64, gridsize 2 by default) in one
process, interleaving repetitions of:
  bare   model.fit with no callbacks
  keras  Keras's TensorBoard(update_freq="batch") + TerminateOnNaN
  suite  ptycho_callbacks.default_callbacks at its defaults
  guard  NaNGuard alone
  forensics  NaNGuard with forensics armed (the batch kept on the device, a
         device-side snapshot of the weights every step)
and prints the median steps per second of each and the time ratios against
`bare` measured in the same run (this machine is noisy: compare ratios, not
absolute speeds). Warm-up steps are not timed.

    python benchmarks/overhead.py --steps 30 --repeats 3
    python benchmarks/overhead.py --json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from ptycho_callbacks import NaNGuard, default_callbacks  # noqa: E402
from ptycho_callbacks._keras import keras  # noqa: E402
from ptycho_callbacks.sim.data import simulate  # noqa: E402
from ptycho_callbacks.sim.model import build_model  # noqa: E402

CONFIGS = ("bare", "keras", "suite", "guard", "forensics")


class StepTimer(keras.callbacks.Callback):
    """Times the batches after the first `warmup` ones of a fit."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup, self.start, self.end, self.timed = warmup, None, None, 0

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.warmup:
            self.end, self.timed = time.perf_counter(), batch - self.warmup + 1


def callbacks_for(name, model, log_dir):
    if name == "bare":
        return []
    if name == "keras":
        return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="batch"),
                keras.callbacks.TerminateOnNaN()]
    if name == "suite":
        return default_callbacks(model, log_dir, verbose=0)
    return [NaNGuard(log_dir=log_dir, forensics=name == "forensics", verbose=0)]


def measure(args):
    data = simulate(N=args.N, gridsize=args.gridsize, n_scan=args.n_scan, nphotons=1e9, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices((data.model_inputs(), data.model_targets()))
    dataset = dataset.repeat().batch(args.batch_size).prefetch(2)
    models = {}
    for name in args.configs:
        keras.utils.set_random_seed(0)
        models[name] = build_model(N=args.N, gridsize=args.gridsize, probe=data.probe,
                                   intensity_scale=data.intensity_scale)
    rates = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats + 1):  # repeat 0 compiles and warms up every model
            for name in args.configs:
                timer = StepTimer(args.warmup)
                log_dir = os.path.join(root, f"{name}-{repeat}")
                callbacks = [timer] + callbacks_for(name, models[name], log_dir)
                models[name].fit(dataset, epochs=1, steps_per_epoch=args.warmup + args.steps,
                                 callbacks=callbacks, verbose=0)
                if repeat:
                    rates[name].append(timer.timed / (timer.end - timer.start))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "steps_per_second": medians,
        "time_ratio_vs_bare": {name: medians["bare"] / medians[name] for name in medians},
        "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
        "N": args.N, "gridsize": args.gridsize, "batch_size": args.batch_size,
        "keras": keras.__version__, "tensorflow": tf.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--gridsize", type=int, default=2)
    parser.add_argument("--n-scan", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if "bare" not in args.configs:
        parser.error("--configs must include bare, the baseline")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'config':<10} {'steps/s':>9} {'time ratio vs bare':>19}")
    for name in args.configs:
        print(f"{name:<10} {result['steps_per_second'][name]:>9.3f} {result['time_ratio_vs_bare'][name]:>19.3f}")
    print(f"({result['repeats']} interleaved repetitions of {result['steps']} steps, N={args.N}, "
          f"gridsize {args.gridsize}, batch {args.batch_size}, Keras {result['keras']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
