"""Where the suite's hook time goes: each callback's batch hooks and epoch ends, timed apart.

Trains the stand-in PtychoPINN model with `default_callbacks` at its defaults
and times every call of every hook of every callback of the suite. Prints,
per callback and hook, the calls and the median and mean milliseconds; for
epoch ends also the mean over the first and the last tenth of the epochs,
where a cost that grows with the run (a record rewritten in full each epoch)
shows. The first epoch (tracing, writers opening) is left out of the median
and mean. It also times what Keras itself spends on a batch once any
callback has batch hooks (it turns the logs into Python numbers then), with
one callback that does nothing. `overhead.py` measures what the hooks cost
together against bare training; this says which callback to look at.

    python benchmarks/hooks.py --N 16 --steps 10 --epochs 400
    python benchmarks/hooks.py --json
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

from ptycho_callbacks import default_callbacks  # noqa: E402
from ptycho_callbacks._keras import keras  # noqa: E402

import stand_in  # noqa: E402

HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_epoch_begin", "on_epoch_end")


def timed(callback, hook, calls):
    """Replaces `callback`'s `hook` by one that appends (epoch, seconds) of each call to `calls`."""
    original = getattr(callback, hook)

    def run_and_time(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        calls.append((callback.epoch, time.perf_counter() - start))
        return result

    setattr(callback, hook, run_and_time)


def keras_dispatch_us(names, batches=2000):
    """Microseconds a batch that Keras spends handing batch hooks (logs `names`, as tensors) to a callback doing nothing."""
    class Nothing(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            pass

        def on_train_batch_end(self, batch, logs=None):
            pass

    callbacks = keras.callbacks.CallbackList([Nothing()], add_history=True)
    logs = {name: tf.constant(1.0) for name in names}
    for batch in range(batches // 10):  # warm-up, untimed
        callbacks.on_train_batch_begin(batch)
        callbacks.on_train_batch_end(batch, logs)
    start = time.perf_counter()
    for batch in range(batches):
        callbacks.on_train_batch_begin(batch)
        callbacks.on_train_batch_end(batch, logs)
    return 1e6 * (time.perf_counter() - start) / batches


def measure(args):
    data = stand_in.simulated_data(args)
    dataset = stand_in.batches(args, data)
    model = stand_in.model(args, data)
    calls = {}
    with tempfile.TemporaryDirectory() as root:
        suite = default_callbacks(model, os.path.join(root, "run"), verbose=0)
        for callback in suite:
            for hook in HOOKS:
                timed(callback, hook, calls.setdefault((type(callback).__name__, hook), []))
        history = model.fit(dataset, epochs=args.epochs, steps_per_epoch=args.steps, verbose=0, callbacks=suite)
        suite[0].run.wait()  # the figures, drawn off the training thread, before their directory goes
    tenth = max(1, args.epochs // 10)
    hooks = []
    for (name, hook), timings in calls.items():
        kept = [1000 * seconds for epoch, seconds in timings if epoch > 0]
        entry = {"callback": name, "hook": hook, "calls": len(kept),
                 "median_ms": statistics.median(kept), "mean_ms": statistics.mean(kept)}
        if hook == "on_epoch_end":
            entry["first_tenth_mean_ms"] = statistics.mean(
                1000 * seconds for epoch, seconds in timings if 0 < epoch <= tenth)
            entry["last_tenth_mean_ms"] = statistics.mean(
                1000 * seconds for epoch, seconds in timings if epoch >= args.epochs - tenth)
        hooks.append(entry)
    return {"N": args.N, "steps": args.steps, "epochs": args.epochs, "hooks": hooks,
            "keras_dispatch_us_per_batch": keras_dispatch_us(list(history.history))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=6, help="epochs (the first is not counted)")
    stand_in.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.epochs < 2:
        parser.error("need --steps >= 1 and --epochs >= 2 (the first epoch is not counted)")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"stand-in N={args.N}, {args.epochs} epochs of {args.steps} steps; ms per call, first epoch left out")
    print(f"{'callback':<24} {'hook':<22} {'calls':>6} {'median':>8} {'mean':>8}  epoch ends: first/last tenth")
    for entry in result["hooks"]:
        trend = (f"  {entry['first_tenth_mean_ms']:8.3f} / {entry['last_tenth_mean_ms']:.3f}"
                 if "last_tenth_mean_ms" in entry else "")
        print(f"{entry['callback']:<24} {entry['hook']:<22} {entry['calls']:>6} {entry['median_ms']:8.3f} "
              f"{entry['mean_ms']:8.3f}{trend}")
    print(f"Keras's own handing of batch hooks to one callback doing nothing: "
          f"{result['keras_dispatch_us_per_batch']:.1f} us per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
