"""Overhead of the callbacks: steps per second of the stand-in model, with and without them.

Trains the stand-in PtychoPINN model (N=64, gridsize 2 by default) in one
process, one real `model.fit` per config:
  bare   model.fit with no callbacks
  keras  Keras's TensorBoard(update_freq="batch") + TerminateOnNaN
  suite  ptycho_callbacks.default_callbacks at its defaults
  guard  NaNGuard alone, with neither rollback nor forensics (the checks only)
  lossguard  NaNGuard(check_weights=False): the losses checked in the step,
         the weights not
  rollback  NaNGuard(restore_weights=True) (a device-side snapshot of the
         weights every step, put back in the step that goes non-finite)
  forensics  NaNGuard with forensics armed (the batch kept on the device, a
         device-side snapshot of the weights every step)
  unguarded  the suite without its NaNGuard: the other callbacks' hooks,
         and nothing in the train step
  null   bare again, on a second model: what a ratio looks like when
         nothing differs (the benchmark's own noise and bias)
and prints the median steps per second of each over the repeats and the
time ratio against `bare`, with a bootstrap 95% interval; with `keras` among
the configs, also each config's time ratio against Keras's pair.

This machine's speed drifts by several percent over seconds, more than the
overhead sought, so fits run one after another did not agree from one
repeat to the next. Here the fits of all configs run at once, each in its
own thread, and take turns batch by batch (`Baton`): only one batch runs
at any time, each round in a new random order, and a turn holds everything from
one batch begin to the next (the step, every callback's hooks, epoch ends).
Drifts then fall on every config alike. Warm-up turns are not timed.
Each config has a model of its own in a repeat, and the models rotate
among the configs from one repeat to the next (`models_of_repeat`).

Fits vary from one to the next by more than their turns show, so the
repeat is the unit: every config traces its train function afresh in each
repeat (the guarded ones must anyway, as the models rotate), and the
bootstrap draws repeats before turns (`bootstrap_picks`). The intervals
then hold the fit-to-fit variation, and more repeats narrow them.

glibc's malloc hands big freed buffers back to the kernel, so every step
faults its buffers in again: about 25,000 page faults, a tenth of a step,
in a number that changes with the process's allocation history (one fit
settled at 20,000 a step, another at 25,000, whatever its callbacks). That
would bias one config against another by more than the callbacks cost, so
the script runs itself again with malloc keeping freed memory
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_ beyond the machine's memory)
unless --system-malloc is given. Page faults per step are printed either way.

Also printed, to say where the time goes:
  hooks    the callbacks' own time per timed step (batch hooks, and epoch
           ends spread over the steps), between two markers placed first
           and last in the callback list;
  in step  what the guard adds to Keras's train step, in place: the guarded
           train functions and Keras's own called in turn on one model,
           each traced afresh several times (traces differ by ~1%);
  parts    the time ratio these two give together:
           (bare step + hooks + in-step cost) / bare step; the whole-fit
           ratio is the measurement, the parts say where it comes from;
  cpu      the process's CPU time per timed step, every thread's: work
           added anywhere shows in it, time spent waiting does not.

That is the `steady` part, the default. `--parts` adds the others issue 23
sets targets for, in the same process and on the same stand-in:
  fixed-cost   what the suite adds once per fit, beyond its steps
               (fixed_cost.py);
  first-trace  what tracing the guarded train step costs against Keras's
               own (first_trace.py).
`--targets` runs every part at both sizes under both Keras versions and
reads them against the targets (targets.py).

    python benchmarks/overhead.py --steps 30 --repeats 3
    python benchmarks/overhead.py --N 16 --parts steady fixed-cost first-trace
    python benchmarks/overhead.py --targets
    python benchmarks/overhead.py --json
"""

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __name__ == "__main__" and "--targets" in sys.argv[1:]:
    # The driver only runs this script and memory.py in subprocesses: it loads no TensorFlow and needs no
    # malloc setting of its own.
    import targets

    sys.exit(targets.main([arg for arg in sys.argv[1:] if arg != "--targets"]))

KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(10 ** 12)}
if (__name__ == "__main__" and sys.platform.startswith("linux") and "--system-malloc" not in sys.argv
        and any(os.environ.get(name) != value for name, value in KEEP_FREED_MEMORY.items())):
    # Before TensorFlow allocates anything: glibc reads these once, at start (see the docstring).
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ptycho_callbacks import NaNGuard, default_callbacks  # noqa: E402
from ptycho_callbacks._keras import keras  # noqa: E402

import first_trace  # noqa: E402
import fixed_cost  # noqa: E402
import stand_in  # noqa: E402
from guarded import call_step, fresh_train_function, guarded_train_function, nan_guard  # noqa: E402
from intervals import interval  # noqa: E402

PARTS = ("steady", "fixed-cost", "first-trace")
"""What the script measures (`--parts`): time per step, fixed cost per fit, first trace of the guarded step."""

CONFIGS = ("bare", "keras", "suite", "unguarded", "guard", "lossguard", "rollback", "forensics", "null")

GUARDED = ("guard", "lossguard", "rollback", "forensics", "suite")
"""The configs whose NaNGuard adds ops to the train step."""


class Baton:
    """Lets the fits of several threads take turns, one batch each, in rounds.

    Every round gives one turn to each fit still running, in an order drawn
    anew (seeded), so that no config always follows the same one.
    """

    def __init__(self, names, seed=0):
        self.names = list(names)
        self._random = random.Random(seed)
        self._order = list(names)
        self._turn = 0
        self._left = set()
        self._condition = threading.Condition()

    def _holder(self):
        return self._order[self._turn]

    def take(self, name):
        with self._condition:
            self._condition.wait_for(lambda: self._holder() == name)

    def pass_on(self, name):
        with self._condition:
            if self._holder() == name:
                self._advance()
            self._condition.notify_all()

    def leave(self, name):
        with self._condition:
            self._left.add(name)
            self.pass_on(name)

    def _advance(self):
        if self._left >= set(self.names):
            return
        while True:
            self._turn += 1
            if self._turn == len(self._order):
                self._turn = 0
                self._order = self._random.sample(self.names, len(self.names))
            if self._holder() not in self._left:
                return


def _page_faults():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


class Turns:
    """One config's fit in a lock-step run: its turns with the baton, timed, and its hooks' share.

    `first()` and `last()` are the markers to put first and last in the
    fit's callback list. A turn runs from the first marker's batch begin
    to the next batch begin (to the last marker's epoch end after the last
    batch), so that it holds the step, every callback's batch hooks and
    any epoch-end work between. Turns after `warmup` batches are timed.
    """

    def __init__(self, name, baton, warmup):
        self.name, self.baton, self.warmup = name, baton, warmup
        self.seconds = []  # per timed turn
        self.page_faults = []  # per timed turn, the whole process's (only one turn runs at a time)
        self.cpu_seconds = []  # per timed turn, the whole process's, every thread
        self.hook_seconds = 0.0  # in timed turns, between the markers: batch hooks and epoch ends
        self._batches = 0
        self._start = self._hook_start = None
        self._start_faults = 0
        self._start_cpu = 0.0
        self._begin_hooks = 0.0  # this batch's begin hooks, until its end hooks add to them

    def _close_turn(self, pass_on=True):
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self.page_faults.append(_page_faults() - self._start_faults)
            self.cpu_seconds.append(time.process_time() - self._start_cpu)
            self._start = None
        if pass_on:
            self.baton.pass_on(self.name)

    def first(self):
        turns = self

        class First(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if turns._batches:
                    turns._close_turn()
                turns.baton.take(turns.name)
                now = time.perf_counter()
                if turns._batches >= turns.warmup:
                    turns._start, turns._start_faults, turns._start_cpu = now, _page_faults(), time.process_time()
                turns._hook_start = now

            def on_train_batch_end(self, batch, logs=None):
                turns._hook_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                turns._hook_start = time.perf_counter()

        return First()

    def last(self):
        turns = self

        class Last(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                turns._begin_hooks = time.perf_counter() - turns._hook_start

            def on_train_batch_end(self, batch, logs=None):
                if turns._start is not None:
                    turns.hook_seconds += turns._begin_hooks + time.perf_counter() - turns._hook_start
                turns._batches += 1

            def on_epoch_end(self, epoch, logs=None):
                if turns._start is not None:
                    turns.hook_seconds += time.perf_counter() - turns._hook_start
                if turns._batches == self.params["epochs"] * self.params["steps"]:
                    turns._close_turn(pass_on=False)  # the fit's end runs untimed, baton in hand (see lock_step_fits)

        return Last()


def callbacks_for(name, model, log_dir):
    if name in ("bare", "null"):
        return []
    if name == "keras":
        return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="batch"),
                keras.callbacks.TerminateOnNaN()]
    if name in ("suite", "unguarded"):
        suite = default_callbacks(model, log_dir, verbose=0)
        return suite if name == "suite" else [callback for callback in suite if not isinstance(callback, NaNGuard)]
    return [NaNGuard(log_dir=log_dir, restore_weights=name == "rollback", forensics=name == "forensics",
                     check_weights=name != "lossguard", verbose=0)]


def lock_step_fits(args, models, dataset, root, repeat):
    """One fit per config, each in its own thread, taking turns batch by batch: {config: Turns}.

    Only one batch runs at any time, and consecutive batches belong to
    different configs, so that the machine's slow drifts (several percent
    over seconds here) fall on every config alike.
    """
    baton = Baton(args.configs)
    turns = {name: Turns(name, baton, args.warmup) for name in args.configs}
    errors = []

    def fit(name):
        try:
            callbacks = ([turns[name].first()]
                         + callbacks_for(name, models[name], os.path.join(root, f"{name}-{repeat}"))
                         + [turns[name].last()])
            models[name].fit(dataset, epochs=args.epochs, steps_per_epoch=args.steps, callbacks=callbacks,
                             verbose=0)
            for run in {callback.run for callback in callbacks if hasattr(callback, "run")}:
                run.wait()  # untimed: the figures drawn off the training thread, before their directory goes
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)
        finally:
            baton.leave(name)  # after the fit's end, or its exception: the others never wait for it

    threads = [threading.Thread(target=fit, args=(name,), name=f"fit-{name}") for name in args.configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return turns


def models_of_repeat(configs, models, repeat):
    """{config: model} for one repeat: each repeat hands the models on by one config.

    Identical models need not run at the same speed (where their buffers
    lie in memory, for one); rotating them keeps that out of the configs'
    ratios once every config has had every model (`--repeats` a multiple of
    the number of configs).
    """
    return {name: models[(index + repeat) % len(models)] for index, name in enumerate(configs)}


def median_rates(seconds_by_repeat, picks=None):
    """Median over repeats of timed turns per second; `picks` ([(repeat, turn indices)]) resamples them."""
    if picks is None:
        picks = [(repeat, slice(None)) for repeat in range(len(seconds_by_repeat))]
    return float(np.median([len(seconds_by_repeat[repeat][turns]) / seconds_by_repeat[repeat][turns].sum()
                            for repeat, turns in picks]))


def bootstrap_picks(generator, turns_per_repeat):
    """One bootstrap draw of `median_rates`'s picks: repeats drawn with replacement, then turns within each.

    Repeats first, because fits vary more than the turns within one show:
    drawing turns alone once gave `null`, which differs from `bare` in
    nothing, an interval against Keras's pair that excluded 1.
    """
    repeats = generator.integers(0, len(turns_per_repeat), len(turns_per_repeat))
    return [(repeat, generator.integers(0, turns_per_repeat[repeat], turns_per_repeat[repeat])) for repeat in repeats]


def measure_fits(args, data, dataset):
    """The whole-fit comparison: lock-step fits of every config, repeated; ratios with bootstrap intervals."""
    models = [stand_in.built_model(args, data, dataset) for _ in args.configs]
    seconds = {name: [] for name in args.configs}
    hook_seconds = {name: 0.0 for name in args.configs}
    page_faults = {name: [] for name in args.configs}
    cpu_seconds = {name: [] for name in args.configs}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for model in models:
                model.train_function = None  # every config's fit traces afresh, as the guarded ones do
            for name, turns in lock_step_fits(args, models_of_repeat(args.configs, models, repeat), dataset, root,
                                              repeat).items():
                seconds[name].append(np.array(turns.seconds))
                hook_seconds[name] += turns.hook_seconds
                page_faults[name].extend(turns.page_faults)
                cpu_seconds[name].extend(turns.cpu_seconds)
    rates = {name: median_rates(values) for name, values in seconds.items()}
    timed = {name: sum(len(values) for values in seconds[name]) for name in args.configs}
    ratios = {name: rates["bare"] / rate for name, rate in rates.items()}
    # The same picks for every config keep each config's turns paired with bare's of the same repeat and round.
    generator = np.random.default_rng(0)
    resampled = {name: [] for name in args.configs}
    turns_per_repeat = [len(values) for values in seconds["bare"]]
    for _ in range(args.bootstrap):
        picks = bootstrap_picks(generator, turns_per_repeat)
        bare = median_rates(seconds["bare"], picks)
        for name in args.configs:
            resampled[name].append(bare / median_rates(seconds[name], picks))
    result = {
        "steps_per_second": rates,
        "time_ratio_vs_bare": ratios,
        "time_ratio_95_interval": _intervals(resampled),
        "timed_steps": timed,
        "hook_ms_per_step": {name: 1000 * hook_seconds[name] / timed[name] for name in args.configs},
        "step_ms": {name: 1000 / rate for name, rate in rates.items()},
        "page_faults_per_step": {name: float(np.median(values)) for name, values in page_faults.items()},
        "cpu_ms_per_step": {name: 1000 * float(np.mean(values)) for name, values in cpu_seconds.items()},
    }
    if "keras" in args.configs:
        # The target compares the suite with Keras's pair, not with bare: the same resamples give that ratio
        # directly, which is tighter than setting two intervals against bare side by side.
        against_pair = {name: np.array(resampled[name]) / np.array(resampled["keras"])
                        for name in args.configs if name not in ("bare", "keras")}
        result["time_ratio_vs_keras"] = {name: ratios[name] / ratios["keras"] for name in against_pair}
        result["time_ratio_vs_keras_95_interval"] = _intervals(against_pair)
    return result


def _intervals(resampled):
    return {name: interval(values) for name, values in resampled.items()}


def step_guard_options(name, model):
    """The options of the `StepGuard` that config `name`'s `NaNGuard` arms in the train step."""
    with tempfile.TemporaryDirectory() as log_dir:
        return nan_guard(callbacks_for(name, model, log_dir)).step_guard_options()


def measure_in_step(args, data, dataset):
    """What the guard adds to each train step, measured in place: guarded train functions against Keras's own.

    One model, Keras's train function and, for each guarded config among
    the configs, the train function its `NaNGuard` would install, called
    in rounds (each round every function once, in a new random order) on
    the same data stream. A call is a whole step, so whatever the check
    costs inside it shows, not only its own ops (compiled and timed alone
    they cost far less than they do in place). Two traces of the same
    function need not run at the same speed (one run with a single trace
    put the guard's step below Keras's, its interval excluding 1, which
    added ops cannot do), so every function is
    traced afresh `--step-traces` times, and the bootstrap draws traces
    before rounds, as `measure_fits` draws repeats before turns.
    """
    model = stand_in.built_model(args, data, dataset)
    options = {name: step_guard_options(name, model) for name in args.configs if name in GUARDED}
    iterator = iter(dataset)
    seconds = {name: [] for name in ["keras", *options]}  # per trace, the seconds of each round's call
    page_faults = []
    for trace in range(args.step_traces):
        functions = {"keras": fresh_train_function(model)}
        functions["keras"](iterator)  # traced now, with the model's own train_step
        for name, guard_options in options.items():
            with guarded_train_function(model, guard_options) as functions[name]:
                functions[name](iterator)  # traced now, while the model's train_step is the guarded one
        trace_seconds, trace_faults = calls_in_rounds(functions, iterator, args.step_rounds, random.Random(trace))
        for name, values in trace_seconds.items():
            seconds[name].append(values)
        page_faults += trace_faults
    keras_seconds = np.array(seconds.pop("keras"))
    log_ratios = {name: np.log(np.array(values) / keras_seconds) for name, values in seconds.items()}
    generator = np.random.default_rng(0)
    picks = [bootstrap_picks(generator, [args.step_rounds] * args.step_traces) for _ in range(args.bootstrap)]
    resampled = {name: np.exp([np.concatenate([values[trace][rounds] for trace, rounds in draw]).mean()
                               for draw in picks])
                 for name, values in log_ratios.items()}
    keras_ms = 1000 * float(np.median(keras_seconds))
    ratios = {name: float(np.exp(values.mean())) for name, values in log_ratios.items()}
    return {
        "traces": args.step_traces, "rounds": args.step_rounds, "keras_step_ms": keras_ms,
        "page_faults_per_step": float(np.median(page_faults)),
        "step_ratio_vs_keras": ratios,
        "step_ratio_95_interval": _intervals(resampled),
        "added_ms_per_step": {name: (ratio - 1) * keras_ms for name, ratio in ratios.items()},
    }


def calls_in_rounds(functions, iterator, rounds, shuffler):
    """Every function called once a round, in a new order each round: ({name: seconds of each call}, faults per call).

    Round 0 warms up and is not timed.
    """
    seconds = {name: [] for name in functions}
    page_faults = []
    order = list(functions)
    for round_ in range(rounds + 1):
        shuffler.shuffle(order)
        for name in order:
            start, start_faults = time.perf_counter(), _page_faults()
            call_step(functions[name], iterator)
            if round_:
                seconds[name].append(time.perf_counter() - start)
                page_faults.append(_page_faults() - start_faults)
    return seconds, page_faults


def measure(args):
    """Every part in `args.parts`, on the stand-in the flags size, in one result.

    The first trace goes first: it is about a process's first fit, so it
    runs before the other parts have traced and fitted in the process.
    """
    data = stand_in.simulated_data(args)
    dataset = stand_in.batches(args, data)
    result = {"parts": args.parts, "N": args.N, "gridsize": args.gridsize, "n_filters": args.n_filters,
              "batch_size": args.batch_size, "keras": keras.__version__, "tensorflow": tf.__version__,
              "malloc": {name: os.environ.get(name) for name in KEEP_FREED_MEMORY}}
    if "first-trace" in args.parts:
        model = stand_in.built_model(args, data, dataset)
        result["first_trace"] = first_trace.measure(args, model, data, step_guard_options("suite", model))
    if "steady" in args.parts:
        result.update(measure_fits(args, data, dataset), repeats=args.repeats, epochs=args.epochs,
                      steps=args.steps, warmup=args.warmup)
        if args.step_rounds and any(name in GUARDED for name in args.configs):
            result["in_step"] = measure_in_step(args, data, dataset)
        result["parts_ratio_vs_bare"] = parts_ratios(result)
    if "fixed-cost" in args.parts:
        result["fixed_cost"] = fixed_cost.measure(args, data, dataset)
    return result


def parts_ratios(result):
    """The time ratio the parts give: (bare step + hooks + what the guard adds to the step in place) / bare step.

    Bare's own hook time (the markers) is already in its step. A guarded
    config whose step was not compared in place (--step-rounds 0) has none.
    """
    bare_ms, hooks = result["step_ms"]["bare"], result["hook_ms_per_step"]
    added = result.get("in_step", {}).get("added_ms_per_step", {})
    return {name: 1 + (hooks[name] - hooks["bare"] + added.get(name, 0.0)) / bare_ms
            for name in hooks if name not in GUARDED or name in added}


def print_table(result, args):
    parts = result.get("parts_ratio_vs_bare", {})
    print(f"{'config':<10} {'steps/s':>8} {'time ratio vs bare':>19} {'95% interval':>15} {'hooks ms/step':>14} "
          f"{'parts ratio':>12} {'cpu ms/step':>12} {'page faults/step':>17}")
    for name in args.configs:
        low, high = result["time_ratio_95_interval"][name]
        part = f"{parts[name]:.3f}" if name in parts else "-"
        print(f"{name:<10} {result['steps_per_second'][name]:>8.3f} {result['time_ratio_vs_bare'][name]:>19.3f} "
              f"{f'{low:.3f}-{high:.3f}':>15} {result['hook_ms_per_step'][name]:>14.2f} {part:>12} "
              f"{result['cpu_ms_per_step'][name]:>12.1f} {result['page_faults_per_step'][name]:>17.0f}")
    malloc = "keeping freed memory" if result["malloc"] == KEEP_FREED_MEMORY else "system"
    print(f"({result['repeats']} lock-step runs of {args.epochs} epochs x {args.steps} steps per config, "
          f"{result['timed_steps']['bare']} timed steps each; N={args.N}, gridsize {args.gridsize}, "
          f"batch {args.batch_size}, Keras {result['keras']}, malloc {malloc})")
    if result.get("time_ratio_vs_keras"):  # empty with bare and keras alone
        print("\ntime ratio against Keras's pair (below 1: cheaper), from the same resamples:")
        for name, ratio in result["time_ratio_vs_keras"].items():
            low, high = result["time_ratio_vs_keras_95_interval"][name]
            print(f"  {name:<10} {ratio:.3f} ({low:.3f}-{high:.3f})")
    if "in_step" in result:
        in_step = result["in_step"]
        print(f"\nwhat the guard adds to the train step in place ({in_step['traces']} traces x "
              f"{in_step['rounds']} rounds of one call each, "
              f"against Keras's step of {in_step['keras_step_ms']:.1f} ms; "
              f"{in_step['page_faults_per_step']:.0f} page faults a step):")
        for name, ratio in in_step["step_ratio_vs_keras"].items():
            low, high = in_step["step_ratio_95_interval"][name]
            print(f"  {name:<10} step ratio {ratio:.3f} ({low:.3f}-{high:.3f}) = "
                  f"{in_step['added_ms_per_step'][name]:+.2f} ms per step")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="overhead.py --targets [--quick] [--json] runs every part at both sizes under both Keras versions "
               "and reads them against issue 23's targets (targets.py).")
    parser.add_argument("--parts", nargs="+", default=["steady"], choices=PARTS,
                        help="steady: time per step (lock-step fits); fixed-cost: per fit (fixed_cost.py); "
                             "first-trace: the guarded step's first trace (first_trace.py)")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (epoch ends are timed too)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each fit")
    parser.add_argument("--repeats", type=int, default=3, help="lock-step runs, each one fit per config")
    stand_in.add_arguments(parser)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples for the 95%% intervals")
    parser.add_argument("--step-traces", type=int, default=4,
                        help="traces of each function in the in-place step comparison")
    parser.add_argument("--step-rounds", type=int, default=150,
                        help="rounds per trace of the in-place step comparison, one call per function each (0: skip)")
    fixed_cost.add_arguments(parser)
    first_trace.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's malloc as it is (it returns freed buffers, and steps fault them in again)")
    args = parser.parse_args(argv)
    if "bare" not in args.configs:
        parser.error("--configs must include bare, the baseline")
    if len(set(args.configs)) != len(args.configs):
        parser.error("--configs must not repeat a config")
    if args.steps < 1 or args.epochs < 1 or args.warmup < 1 or args.epochs * args.steps - args.warmup < 2:
        parser.error("need --steps, --epochs and --warmup >= 1 and at least 2 timed steps per fit")
    if args.repeats < 1 or args.bootstrap < 1 or args.step_rounds < 0 or args.step_traces < 1:
        parser.error("need --repeats >= 1, --bootstrap >= 1, --step-traces >= 1 and --step-rounds >= 0")
    if args.fits < 1 or args.fit_steps < 4:
        parser.error("need --fits >= 1 and --fit-steps >= 4 (its second half gives the steady step)")
    if args.trace_repeats < 1 or args.trace_calls < 1 or args.trace_batch_size < 1:
        parser.error("need --trace-repeats, --trace-calls and --trace-batch-size >= 1")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "steady" in args.parts:
        print_table(result, args)
    if "fixed_cost" in result:
        fixed_cost.print_table(result["fixed_cost"])
    if "first_trace" in result:
        first_trace.print_table(result["first_trace"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
