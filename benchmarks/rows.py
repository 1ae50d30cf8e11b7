"""What writing a block of per-batch rows costs: R rows of C scalars written to a TensorBoard event file.

Times `scalar_rows.write_rows` of R rows (a block of batches the run takes
and writes, `Run.take_batches`), as it writes now (one event per row, the
rows serialized in numpy and written by one compiled call) and, in the same
process, by its per-value path (one `WriteSummary` op per scalar in a
compiled loop, what it falls back to when a row template does not check
out, and how every row was written before). Each path writes to a
writer of its own. In every repetition each path runs a block of flushes,
the first path alternating from one repetition to the next; blocks rather
than single flushes take turns, since the writer syncs its file every few
events and the per-value path's many syncs slowed the current path's
flush right after them. Prints, per number of columns, the median ms per
flush of each path, and the per-value path's time over the current one's
(mean over the repetitions) with a bootstrap 95% interval over the
repetitions, drawn paired.

The event files go to a temporary directory under `--dir` (by default the
system's), so its disk's syncs count as they would for a run's log
directory; a tmpfs such as /dev/shm leaves them out.

    python benchmarks/rows.py
    python benchmarks/rows.py --rows 64 --columns 20 2 --repeats 30 --flushes 20 --dir /dev/shm
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ptycho_callbacks.callbacks import scalar_rows  # noqa: E402

import intervals  # noqa: E402

PATHS = ("current", "per_value")


def per_value_path():
    """A context in which `write_rows` takes its per-value path, as for tags without a sound template."""
    return mock.patch.object(scalar_rows, "_row_template", lambda tags: None)


def timed_flush(writer, path, steps, tags, values):
    """Seconds of one write of the rows (`steps`, `values`) to `writer`, on `path`."""
    start = time.perf_counter()
    if path == "current":
        scalar_rows.write_rows(writer, steps, tags, values)
    else:
        with per_value_path():
            scalar_rows.write_rows(writer, steps, tags, values)
    return time.perf_counter() - start


def measure(args, columns, root):
    """{path: [mean ms per flush in each repetition]} for flushes of `args.rows` rows of `columns` scalars."""
    tags = tuple(f"loss/batch/component_{column}" for column in range(columns))
    values = np.random.default_rng(0).normal(size=(args.rows, columns))
    writers = {path: tf.summary.create_file_writer(os.path.join(root, f"{columns}-{path}")) for path in PATHS}
    step = 0
    for path in PATHS:  # traces and opens the files, untimed
        timed_flush(writers[path], path, np.arange(args.rows), tags, values)
    times = {path: [] for path in PATHS}
    for repeat in range(args.repeats):
        for path in PATHS if repeat % 2 == 0 else PATHS[::-1]:
            seconds = []
            for _ in range(args.flushes):
                step += args.rows
                seconds.append(timed_flush(writers[path], path, np.arange(step, step + args.rows), tags, values))
            times[path].append(1000 * statistics.mean(seconds))
    for writer in writers.values():
        writer.close()
    return times


def summarize(args, columns, times):
    """Medians of both paths, and per-value over current (a ratio of means) with its paired 95% interval."""
    current, per_value = np.asarray(times["current"]), np.asarray(times["per_value"])
    low, high = intervals.paired_interval(lambda old, new: old.mean() / new.mean(), per_value, current,
                                          resamples=args.bootstrap)
    return {"rows": args.rows, "columns": columns,
            "current_ms": statistics.median(current), "per_value_ms": statistics.median(per_value),
            "ratio": float(per_value.mean() / current.mean()), "ratio_interval": [low, high]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows per flush (the most the run takes in one block)")
    parser.add_argument("--columns", type=int, nargs="+", default=[20, 2], help="scalars per row, one run each")
    parser.add_argument("--repeats", type=int, default=30, help="repetitions, the unit of the interval")
    parser.add_argument("--flushes", type=int, default=20, help="flushes of each path per repetition")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples for the 95%% interval")
    parser.add_argument("--dir", default=None, help="where the temporary event files go (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if min(args.rows, args.repeats, args.flushes, *args.columns) < 1:
        parser.error("--rows, --columns, --repeats and --flushes must be at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        results = [summarize(args, columns, measure(args, columns, root)) for columns in args.columns]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"ms per flush of {args.rows} rows; median of {args.repeats} repetitions of {args.flushes} flushes per path")
    print(f"{'columns':>7} {'current':>9} {'per-value':>10} {'per-value / current':>20}  95% interval")
    for result in results:
        low, high = result["ratio_interval"]
        print(f"{result['columns']:>7} {result['current_ms']:9.3f} {result['per_value_ms']:10.3f} "
              f"{result['ratio']:20.2f}  {low:.2f}-{high:.2f}")
    print(f"TensorFlow {tf.__version__}; event files under {args.dir or tempfile.gettempdir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
