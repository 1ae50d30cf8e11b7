"""Fixed cost per fit: what the suite adds to every fit beyond its steps, paired with bare fits in one process.

A sweep trains one model after another, or one model again and again, with
a new suite (`default_callbacks`, a new run directory) for every fit. Beyond
what it adds to each step (overhead.py's lock-step fits), the suite costs
something once per fit: building it, its train begin (writers, the guard's
snapshot and install), its first batch, its epoch end, its train end (the
record, the report, its figures). Issue 23 bounds that cost for every fit
after the first in a process.

Two models, one for bare fits and one for suite fits, are fitted once
untimed (their first fits trace their train functions; the guarded step is
traced once per model and compile). Then `--fits` repetitions, each one
bare fit and one suite fit of one epoch of `--fit-steps` steps, the order
alternating from one repetition to the next. A fit's fixed cost is its
wall time (from building its callbacks to the return of `fit`) less its
steps times its steady step: the median time from one batch begin to the
next over the fit's second half. Not over all of it: a fit's first batches
can hold one-off work (a new run compiling what it writes with), which is
fixed cost, not a step. The suite's
cost is its fixed cost less bare's of the same repetition, with a bootstrap
interval over the repetitions.

Where it goes: two markers, first and last in each fit's callback list,
cut the fit's wall time into parts, each also paired with bare's:
  setup        building the callbacks and Keras's own start of fit, up to
               the callbacks' train begin
  train begin  the callbacks' on_train_begin
  early steps  from there to the middle batch's begin, less its steady steps
  late steps   from there to the epoch end, less its steady steps (near 0:
               the median's own error)
  epoch end    the callbacks' on_epoch_end
  train end    the callbacks' on_train_end
  rest         Keras's own end of fit, until `fit` returns
Work a run defers to the background thread at its close (its figures)
runs while the next fit trains; here each suite fit waits for its own
after `fit` returns, outside its wall time, so that it slows no later fit
(on two cores it would, bare's as much as the suite's), and that wait is
reported beside the fixed cost as `background`.
"""

import os
import tempfile
import time
from collections import defaultdict

import numpy as np

from ptycho_callbacks import default_callbacks
from ptycho_callbacks._keras import keras

import stand_in
from intervals import paired_interval

PARTS = ("setup", "train_begin", "early_steps", "late_steps", "epoch_end", "train_end", "rest")
CONFIGS = ("bare", "suite")


def add_arguments(parser):
    parser.add_argument("--fits", type=int, default=10,
                        help="fixed cost: timed repetitions, each one bare and one suite fit")
    parser.add_argument("--fit-steps", type=int, default=10,
                        help="fixed cost: steps of each one-epoch fit (>= 4; the second half gives the steady step)")


class Stamps(keras.callbacks.Callback):
    """Notes when each hook a fit's parts need is called: {hook: [time.perf_counter() of each call]}."""

    def __init__(self):
        super().__init__()
        self.times = defaultdict(list)

    def on_train_begin(self, logs=None):
        self.times["train_begin"].append(time.perf_counter())

    def on_train_batch_begin(self, batch, logs=None):
        self.times["batch_begin"].append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.times["epoch_end"].append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.times["train_end"].append(time.perf_counter())


def timed_fit(model, dataset, steps, log_dir=None):
    """One fit of one epoch of `steps` steps, bare or (with `log_dir`) with a new suite: its parts in seconds.

    The parts (see the module's docstring) add up to the fit's fixed cost:
    its wall time less `steps` steady steps. Beside them, `background`: the
    time, after `fit` returned, until the work its run deferred to the
    background thread was done.
    """
    start = time.perf_counter()
    suite = [] if log_dir is None else default_callbacks(model, log_dir, verbose=0)
    first, last = Stamps(), Stamps()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[first, *suite, last])
    end = time.perf_counter()
    if suite:
        suite[0].run.wait()  # the closing work its run left to the background thread
    background = time.perf_counter() - end
    first, last = first.times, last.times
    begins = first["batch_begin"]
    middle = steps // 2
    steady = float(np.median(np.diff(begins[middle:])))
    return {
        "setup": first["train_begin"][0] - start,
        "train_begin": last["train_begin"][0] - first["train_begin"][0],
        "early_steps": begins[middle] - last["train_begin"][0] - middle * steady,
        "late_steps": first["epoch_end"][0] - begins[middle] - (steps - middle) * steady,
        "epoch_end": last["epoch_end"][0] - first["epoch_end"][0],
        "train_end": last["train_end"][0] - first["train_end"][0],
        "rest": end - last["epoch_end"][0] - (last["train_end"][0] - first["train_end"][0]),
        "steady_step": steady,
        "wall": end - start,
        "background": background,
    }


def measure(args, data, dataset):
    """The suite's fixed cost per fit beyond bare's (ms, with its interval), and part by part."""
    models = {name: stand_in.built_model(args, data, dataset) for name in CONFIGS}
    parts = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as root:
        def fit(name, label):
            log_dir = os.path.join(root, label) if name == "suite" else None
            return timed_fit(models[name], dataset, args.fit_steps, log_dir)

        first_fit = {name: fit(name, "first")["wall"] for name in CONFIGS}  # untimed in the figures
        for repetition in range(args.fits):
            for name in CONFIGS if repetition % 2 == 0 else CONFIGS[::-1]:
                parts[name].append(fit(name, f"fit-{repetition}"))
    ms = {name: {part: 1000 * np.array([fit_parts[part] for fit_parts in fits])
                 for part in (*PARTS, "steady_step", "background")}
          for name, fits in parts.items()}
    fixed = {name: sum(ms[name][part] for part in PARTS) for name in CONFIGS}
    added = fixed["suite"] - fixed["bare"]
    return {
        "fits": args.fits, "fit_steps": args.fit_steps,
        "added_ms_per_fit": float(added.mean()),
        "added_ms_95_interval": paired_interval(np.mean, added, resamples=args.bootstrap),
        "added_ms_by_part": {part: float((ms["suite"][part] - ms["bare"][part]).mean()) for part in PARTS},
        "fixed_ms_per_fit": {name: float(values.mean()) for name, values in fixed.items()},
        "steady_step_ms": {name: float(np.median(ms[name]["steady_step"])) for name in CONFIGS},
        "background_ms_per_fit": float(ms["suite"]["background"].mean()),
        "first_fit_seconds": first_fit,
    }


def print_table(result):
    low, high = result["added_ms_95_interval"]
    steady = result["steady_step_ms"]
    print(f"\nfixed cost per fit ({result['fits']} repetitions of one bare and one suite fit of 1 epoch x "
          f"{result['fit_steps']} steps, after a first of each; steady steps of {steady['bare']:.1f} ms bare, "
          f"{steady['suite']:.1f} ms with the suite):")
    print(f"  the suite adds {result['added_ms_per_fit']:.1f} ms per fit ({low:.1f} to {high:.1f}) beyond its steps "
          f"(fixed cost bare {result['fixed_ms_per_fit']['bare']:.1f} ms, "
          f"suite {result['fixed_ms_per_fit']['suite']:.1f} ms)")
    print("  of which, suite minus bare: " + ", ".join(
        f"{part.replace('_', ' ')} {value:+.1f}" for part, value in result["added_ms_by_part"].items()) + " ms")
    print(f"  and off the training thread, waited for after each fit: {result['background_ms_per_fit']:.1f} ms")
    first = result["first_fit_seconds"]
    print(f"  first fits (tracing included, not in the figures): bare {first['bare']:.2f} s, "
          f"suite {first['suite']:.2f} s")
