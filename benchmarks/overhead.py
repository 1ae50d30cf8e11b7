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

Whole fits differ by several percent from one repetition to the next on a
shared machine (single steps by ~10%), more than the overhead sought, so the
run also measures the two parts of the overhead where the noise is small:
  hooks    the callbacks' own time per batch, timed inside the same fits
           between two markers, one first and one last in the callback list;
  in step  the ops the guard adds to Keras's train step, compiled and timed
           on their own with a real batch, against an empty compiled call.
The estimated time ratio is 1 + (in-step ops + hooks) / bare step.

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
from ptycho_callbacks.callbacks.batch_values import tf_variable  # noqa: E402
from ptycho_callbacks.callbacks.step_guard import StepGuard  # noqa: E402
from ptycho_callbacks.forensics.capture import model_variables  # noqa: E402

import stand_in  # noqa: E402

CONFIGS = ("bare", "keras", "suite", "guard", "forensics")

STEP_GUARDS = {
    # The in-step part of each config, as NaNGuard sets it up (see NaNGuard._prepare_variables).
    "guard": dict(keep_snapshot=False, restore_in_step=False, capture_batch=False),
    "forensics": dict(keep_snapshot=True, restore_in_step=False, capture_batch=True),
    "suite": dict(keep_snapshot=True, restore_in_step=True, capture_batch=True),
}


class Marker(keras.callbacks.Callback):
    """One of two markers around the callbacks under test; times the batches after `warmup`.

    The first marker's batch begin to the last's is the callbacks' begin
    hooks; the last's batch begin to the first's batch end is Keras's train
    step; the first's batch end to the last's is the callbacks' end hooks.
    """

    def __init__(self, clock, position, warmup):
        super().__init__()
        self.clock, self.position, self.warmup = clock, position, warmup

    def on_train_batch_begin(self, batch, logs=None):
        self.clock.mark(self.position, "begin", batch, self.warmup)

    def on_train_batch_end(self, batch, logs=None):
        self.clock.mark(self.position, "end", batch, self.warmup)


class BatchClock:
    """Marks from a `Marker` pair: batch times, step times and hook times of one fit."""

    def __init__(self):
        self.marks = {}

    def mark(self, position, hook, batch, warmup):
        if batch >= warmup:
            self.marks[(position, hook, batch)] = time.perf_counter()

    def batches(self):
        return sorted({batch for _, _, batch in self.marks})

    def wall_seconds(self):
        batches = self.batches()
        return self.marks[("last", "end", batches[-1])] - self.marks[("first", "begin", batches[0])]

    def hook_seconds(self):
        """Median time per batch spent in the callbacks between the markers."""
        return statistics.median(
            (self.marks[("last", "begin", b)] - self.marks[("first", "begin", b)])
            + (self.marks[("last", "end", b)] - self.marks[("first", "end", b)]) for b in self.batches())

    def step_seconds(self):
        return statistics.median(self.marks[("first", "end", b)] - self.marks[("last", "begin", b)]
                                 for b in self.batches())


def callbacks_for(name, model, log_dir):
    if name == "bare":
        return []
    if name == "keras":
        return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="batch"),
                keras.callbacks.TerminateOnNaN()]
    if name == "suite":
        return default_callbacks(model, log_dir, verbose=0)
    return [NaNGuard(log_dir=log_dir, forensics=name == "forensics", verbose=0)]


def measure_fits(args, data, dataset):
    """The whole-fit comparison: interleaved repetitions of every config; hooks timed inside the same fits."""
    models = {name: stand_in.model(args, data) for name in args.configs}
    rates = {name: [] for name in args.configs}
    hooks = {name: [] for name in args.configs}
    steps = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats + 1):  # repeat 0 compiles and warms up every model
            for name in (args.configs if repeat % 2 else args.configs[::-1]):  # no config always first
                clock = BatchClock()
                log_dir = os.path.join(root, f"{name}-{repeat}")
                callbacks = ([Marker(clock, "first", args.warmup)] + callbacks_for(name, models[name], log_dir)
                             + [Marker(clock, "last", args.warmup)])
                models[name].fit(dataset, epochs=1, steps_per_epoch=args.warmup + args.steps,
                                 callbacks=callbacks, verbose=0)
                if repeat:
                    rates[name].append(len(clock.batches()) / clock.wall_seconds())
                    hooks[name].append(clock.hook_seconds())
                    steps[name].append(clock.step_seconds())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "steps_per_second": medians,
        "time_ratio_vs_bare": {name: medians["bare"] / medians[name] for name in medians},
        "hook_ms_per_step": {name: 1000 * statistics.median(values) for name, values in hooks.items()},
        "train_step_ms": {name: 1000 * statistics.median(values) for name, values in steps.items()},
    }


def measure_in_step(args, data, dataset):
    """The cost of the ops the guard adds to each train step, timed alone to a few microseconds.

    Whole steps vary by ~10% from one to the next on this machine, so the
    few hundred microseconds the guard adds cannot be seen in them. Instead,
    `StepGuard.after_step` (exactly what the guarded step runs after Keras's
    own) is compiled on its own, with a real batch and finite losses, and
    timed against a compiled function that takes the same inputs and does
    nothing, in interleaved blocks. Inside the train step there is no call
    overhead at all, so this is an upper bound of what a step pays.
    """
    model = stand_in.model(args, data)
    model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)  # builds the model and its metrics
    variables = [tf_variable(v) for _, v in model_variables(model) if tf.as_dtype(v.dtype).is_floating]
    batch = next(iter(dataset))
    logs = {name: tf.constant(1.0) for name in ["loss"] + [f"{output}_loss" for output in model.output_names]}
    functions = {"nothing": tf.function(lambda batch, logs: tf.constant(False), autograph=False)}
    for name, options in STEP_GUARDS.items():
        guard = StepGuard(model, variables, check_weights=True, **options)
        guard.reset()
        guard.install()  # as at train begin: decides what is captured; then the model gets its step back
        guard.uninstall()
        functions[name] = tf.function(guard.after_step, autograph=False)
    seconds = {name: [] for name in functions}
    for block in range(args.op_blocks + 1):  # block 0 traces and warms up
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(args.op_calls):
                function(batch, logs).numpy()
            if block:
                seconds[name].append((time.perf_counter() - start) / args.op_calls)
    nothing = statistics.median(seconds["nothing"])
    return {
        "blocks": args.op_blocks, "calls_per_block": args.op_calls,
        "call_overhead_ms": 1000 * nothing,
        "added_ms_per_step": {name: 1000 * (statistics.median(values) - nothing)
                              for name, values in seconds.items() if name != "nothing"},
    }


def measure(args):
    data = stand_in.simulated_data(args)
    dataset = stand_in.dataset(data).repeat().batch(args.batch_size).prefetch(2)
    result = measure_fits(args, data, dataset)
    result.update(repeats=args.repeats, steps=args.steps, warmup=args.warmup, N=args.N, gridsize=args.gridsize,
                  batch_size=args.batch_size, keras=keras.__version__, tensorflow=tf.__version__)
    if args.op_blocks:
        in_step = result["in_step"] = measure_in_step(args, data, dataset)
        step_ms = result["train_step_ms"]["bare"] + result["hook_ms_per_step"]["bare"]
        result["estimated_time_ratio"] = {
            name: 1.0 + (in_step["added_ms_per_step"].get(name, 0.0) + result["hook_ms_per_step"][name]
                         - result["hook_ms_per_step"]["bare"]) / step_ms
            for name in args.configs}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each fit")
    parser.add_argument("--repeats", type=int, default=3)
    stand_in.add_arguments(parser)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--op-blocks", type=int, default=7,
                        help="interleaved blocks timing the guard's in-step ops alone (0: skip)")
    parser.add_argument("--op-calls", type=int, default=200, help="calls per block")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if "bare" not in args.configs:
        parser.error("--configs must include bare, the baseline")
    if args.steps < 2 or args.repeats < 1 or args.op_blocks < 0 or args.op_calls < 1:
        parser.error("need --steps >= 2, --repeats >= 1, --op-blocks >= 0 and --op-calls >= 1")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    estimated = result.get("estimated_time_ratio", {})
    print(f"{'config':<10} {'steps/s':>8} {'ratio vs bare':>14} {'hooks ms/step':>14} {'estimated ratio':>16}")
    for name in args.configs:
        print(f"{name:<10} {result['steps_per_second'][name]:>8.3f} {result['time_ratio_vs_bare'][name]:>14.3f} "
              f"{result['hook_ms_per_step'][name]:>14.2f} "
              f"{estimated[name] if name in estimated else float('nan'):>16.3f}")
    print(f"({result['repeats']} interleaved fits of {result['steps']} timed steps per config, N={args.N}, "
          f"gridsize {args.gridsize}, batch {args.batch_size}, Keras {result['keras']})")
    if "in_step" in result:
        in_step = result["in_step"]
        step_ms = result["train_step_ms"]["bare"]
        print(f"\nops the guard adds to each train step, timed alone ({in_step['blocks']} blocks of "
              f"{in_step['calls_per_block']} calls, less an empty call's {in_step['call_overhead_ms']:.3f} ms):")
        for name, added in in_step["added_ms_per_step"].items():
            print(f"  {name:<10} {added:7.3f} ms per step = {100 * added / step_ms:.3f}% of the bare step")
        print("estimated ratio = 1 + (in-step ops + hooks) / bare step; forensics against the guard alone: "
              f"{estimated['forensics'] / estimated['guard']:.4f}" if {"forensics", "guard"} <= set(estimated)
              else "estimated ratio = 1 + (in-step ops + hooks) / bare step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
