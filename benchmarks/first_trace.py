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

Tracing the same Python code again in a process is faster than the first
time (autograph converts each function once), and Keras's function is
first traced by the model's warm-up fit. So before the repetitions the
guarded function is traced once, untimed: the figures compare every trace
after the first in the process, alike on both sides.
"""

import time

import numpy as np

from guarded import call_step, fresh_train_function, guarded_train_function
from intervals import paired_interval

NAMES = ("keras", "guarded")


def add_arguments(parser):
    parser.add_argument("--trace-repeats", type=int, default=6,
                        help="first trace: repetitions, each one trace of Keras's and of the guarded train function")
    parser.add_argument("--trace-calls", type=int, default=5,
                        help="first trace: steady calls after the first, whose median is taken from it")


def trace_seconds(function, iterator, calls):
    """(first call less the median of `calls` steady calls after it, that median) in seconds."""
    seconds = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        call_step(function, iterator)
        seconds.append(time.perf_counter() - start)
    steady = float(np.median(seconds[1:]))
    return seconds[0] - steady, steady


def one_trace(name, model, iterator, options, calls):
    """`trace_seconds` of a train function made anew: Keras's own, or the guarded one with these `options`."""
    if name == "keras":
        return trace_seconds(fresh_train_function(model), iterator, calls)
    with guarded_train_function(model, options) as function:
        return trace_seconds(function, iterator, calls)


def measure(args, model, dataset, options):
    """Traces of Keras's and of the guarded train function (`options`: the suite guard's) on `model`, paired."""
    iterator = iter(dataset)
    one_trace("guarded", model, iterator, options, 1)  # the guard's code converted once (see the docstring)
    traces = {name: [] for name in NAMES}
    steady = {name: [] for name in NAMES}
    for repetition in range(args.trace_repeats):
        for name in NAMES if repetition % 2 == 0 else NAMES[::-1]:
            trace, step = one_trace(name, model, iterator, options, args.trace_calls)
            traces[name].append(trace)
            steady[name].append(step)
    keras_s, guarded_s = (np.array(traces[name]) for name in NAMES)
    return {
        "repeats": args.trace_repeats, "calls": args.trace_calls,
        "trace_seconds": {name: float(np.mean(values)) for name, values in traces.items()},
        "steady_step_ms": {name: 1000 * float(np.median(values)) for name, values in steady.items()},
        "trace_ratio": float(guarded_s.mean() / keras_s.mean()),
        "trace_ratio_95_interval": paired_interval(lambda k, g: g.mean() / k.mean(), keras_s, guarded_s,
                                                   resamples=args.bootstrap),
        "added_seconds": float((guarded_s - keras_s).mean()),
        "added_seconds_95_interval": paired_interval(np.mean, guarded_s - keras_s, resamples=args.bootstrap),
    }


def print_table(result):
    low, high = result["trace_ratio_95_interval"]
    added_low, added_high = result["added_seconds_95_interval"]
    traces, steady = result["trace_seconds"], result["steady_step_ms"]
    print(f"\nfirst-fit trace ({result['repeats']} repetitions, each one fresh trace of each function; a trace is "
          f"the first call less the median of the {result['calls']} after it):")
    print(f"  Keras's train function {traces['keras']:.2f} s, guarded {traces['guarded']:.2f} s: ratio "
          f"{result['trace_ratio']:.3f} ({low:.3f} to {high:.3f}), {result['added_seconds']:+.2f} s "
          f"({added_low:+.2f} to {added_high:+.2f}); steady calls {steady['keras']:.1f} and "
          f"{steady['guarded']:.1f} ms")
