"""First-fit trace: what tracing the guarded train step costs against tracing Keras's own, paired per repetition.

A model's first fit traces its train function: Keras's own when bare, the
guarded one `NaNGuard` installs with the suite (Keras's is then never
called). Issue 23 bounds the guarded trace at 10% above Keras's, at
PtychoPINN's real size.

On one model, each repetition makes Keras's train function anew and the
guarded one anew (a new `StepGuard`, as at a model's first guarded fit),
one after the other, the order alternating from one repetition to the next.
A function's trace is the time of its first call less the median of the
`--trace-calls` calls after it (a steady step), so that the step itself,
which the guard also makes longer, is not counted as trace. The ratio is
the guarded traces' mean over Keras's, with a bootstrap interval over the
repetitions, and the added seconds are the mean difference.

Where the benchmark finds the `tf.function` a train function calls
(`guarded.traced_function`), the trace is split in two: the Python trace
(`get_concrete_function`, which builds the graph) and the first run
(TensorFlow's graph optimization and set-up, the first call less a steady
one). The graphs' op counts, Keras's and the guarded one's, say how much the
guard adds to what both parts work through.

Three things keep the noise of the rest of the step out of the figure:
- Tracing the same Python code again in a process is faster than the first
  time (autograph converts each function once), and Keras's function is
  first traced by the model's warm-up fit. So before the repetitions the
  guarded function is traced once, untimed: the figures compare every trace
  after the first in the process, alike on both sides.
- Garbage from earlier traces (graphs are full of reference cycles) is
  collected before each trace, not inside whichever trace Python's
  collector happens to run in.
- The functions are traced and called on batches of `--trace-batch-size`
  (1 by default). The graph, and so its trace, is the same at any batch
  size, while the steady step subtracted from the first call is not: at
  PtychoPINN's size and a batch of 16 it is as long as the trace itself,
  and its noise hid the guard's share.
"""

import argparse
import gc
import time

import numpy as np

import stand_in
from guarded import call_step, fresh_train_function, graph_ops, guarded_train_function, traced_function
from intervals import paired_interval

NAMES = ("keras", "guarded")


def add_arguments(parser):
    parser.add_argument("--trace-repeats", type=int, default=6,
                        help="first trace: repetitions, each one trace of Keras's and of the guarded train function")
    parser.add_argument("--trace-calls", type=int, default=5,
                        help="first trace: steady calls after the first, whose median is taken from it")
    parser.add_argument("--trace-batch-size", type=int, default=1,
                        help="first trace: batch size of the calls (the graph does not depend on it, the step does)")


def trace_seconds(function, iterator, calls):
    """{"python", "first_run", "trace", "steady", "ops"} of a train function never called before.

    "trace" is the first call less the median of `calls` steady calls
    after it; "python" (the graph built before that call) and
    "first_run" split it, and "ops" counts the graph's ops, when the
    train function's `tf.function` is found (else they are None).
    """
    gc.collect()
    traced = traced_function(function)
    python = ops = None
    if traced is not None:
        start = time.perf_counter()
        concrete = traced.get_concrete_function(iterator)
        python = time.perf_counter() - start
        ops = graph_ops(concrete)
    seconds = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        call_step(function, iterator)
        seconds.append(time.perf_counter() - start)
    steady = float(np.median(seconds[1:]))
    first_run = seconds[0] - steady
    trace = first_run if python is None else python + first_run
    return {"python": python, "first_run": first_run, "trace": trace, "steady": steady, "ops": ops}


def one_trace(name, model, iterator, options, calls):
    """`trace_seconds` of a train function made anew: Keras's own, or the guarded one with these `options`."""
    if name == "keras":
        return trace_seconds(fresh_train_function(model), iterator, calls)
    with guarded_train_function(model, options, iterator) as function:
        return trace_seconds(function, iterator, calls)


def _ratio(keras_s, guarded_s, resamples):
    """The ratio of the means of paired `guarded_s` and `keras_s`, and its interval: (ratio, [low, high])."""
    return (float(guarded_s.mean() / keras_s.mean()),
            paired_interval(lambda k, g: g.mean() / k.mean(), keras_s, guarded_s, resamples=resamples))


def measure(args, model, data, options):
    """Traces of Keras's and of the guarded train function (`options`: the suite guard's) on `model`, paired.

    The calls run on `data` in batches of `args.trace_batch_size`.
    """
    batched = argparse.Namespace(**{**vars(args), "batch_size": args.trace_batch_size})
    iterator = iter(stand_in.batches(batched, data))
    one_trace("guarded", model, iterator, options, 1)  # the guard's code converted once (see the docstring)
    runs = {name: [] for name in NAMES}
    for repetition in range(args.trace_repeats):
        for name in NAMES if repetition % 2 == 0 else NAMES[::-1]:
            runs[name].append(one_trace(name, model, iterator, options, args.trace_calls))

    def column(name, part):
        return np.array([run[part] for run in runs[name]])

    keras_s, guarded_s = column("keras", "trace"), column("guarded", "trace")
    ratio, ratio_interval = _ratio(keras_s, guarded_s, args.bootstrap)
    result = {
        "repeats": args.trace_repeats, "calls": args.trace_calls, "batch_size": args.trace_batch_size,
        "trace_seconds": {name: float(column(name, "trace").mean()) for name in NAMES},
        "steady_step_ms": {name: 1000 * float(np.median(column(name, "steady"))) for name in NAMES},
        "trace_ratio": ratio, "trace_ratio_95_interval": ratio_interval,
        "added_seconds": float((guarded_s - keras_s).mean()),
        "added_seconds_95_interval": paired_interval(np.mean, guarded_s - keras_s, resamples=args.bootstrap),
        "graph_ops": None, "parts": None,
    }
    if all(run["ops"] is not None for name in NAMES for run in runs[name]):
        result["graph_ops"] = {name: runs[name][-1]["ops"] for name in NAMES}
        result["parts"] = {}
        for part in ("python", "first_run"):
            keras_part, guarded_part = column("keras", part), column("guarded", part)
            part_ratio, part_interval = _ratio(keras_part, guarded_part, args.bootstrap)
            result["parts"][part] = {"seconds": {"keras": float(keras_part.mean()),
                                                 "guarded": float(guarded_part.mean())},
                                     "ratio": part_ratio, "ratio_95_interval": part_interval}
    return result


def print_table(result):
    low, high = result["trace_ratio_95_interval"]
    added_low, added_high = result["added_seconds_95_interval"]
    traces, steady = result["trace_seconds"], result["steady_step_ms"]
    print(f"\nfirst-fit trace ({result['repeats']} repetitions, each one fresh trace of each function, batches "
          f"of {result['batch_size']}; a trace is the first call less the median of the {result['calls']} after it):")
    print(f"  Keras's train function {traces['keras']:.2f} s, guarded {traces['guarded']:.2f} s: ratio "
          f"{result['trace_ratio']:.3f} ({low:.3f} to {high:.3f}), {result['added_seconds']:+.2f} s "
          f"({added_low:+.2f} to {added_high:+.2f}); steady calls {steady['keras']:.1f} and "
          f"{steady['guarded']:.1f} ms")
    if result["parts"] is None:
        print("  (the train function's tf.function was not found: no split into Python trace and first run)")
        return
    ops = result["graph_ops"]
    print(f"  graph ops: Keras's {ops['keras']}, guarded {ops['guarded']} "
          f"({ops['guarded'] - ops['keras']:+d}, {ops['guarded'] / ops['keras'] - 1:+.1%})")
    for part, label in (("python", "Python trace (graph built)"), ("first_run", "first run (graph set up)")):
        entry = result["parts"][part]
        part_low, part_high = entry["ratio_95_interval"]
        print(f"  {label}: Keras's {entry['seconds']['keras']:.3f} s, guarded {entry['seconds']['guarded']:.3f} s: "
              f"ratio {entry['ratio']:.3f} ({part_low:.3f} to {part_high:.3f})")
