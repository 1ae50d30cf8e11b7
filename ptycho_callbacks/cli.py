"""The `ptycho-callbacks` command: `demo` trains the bundled model, `report` renders records, `replay` replays a NaN.

Every command line of the package is here; the work itself is done by
`demo`, `render` and `nan.replay`, imported when a command runs.
"""

import argparse
import glob
import json
import os
import sys

from .run_dir import FORENSICS_FOLDER, RECORD_FILE, TENSORBOARD_FOLDER, record_path, report_path


def _parse(parser, argv):
    """(arguments, None), or (None, the exit status argparse asked for: 0 after --help, 2 for a usage error)."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as exit_request:
        return None, int(exit_request.code or 0)


def _demo_parser():
    from .demo import SCENARIOS, DemoConfig

    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="ptycho-callbacks demo",
        description="Train the bundled stand-in PtychoPINN model on simulated data with every "
                    "ptycho_callbacks callback, one run per scenario, and write for each run its "
                    "TensorBoard logs, record.json and report.md, plus summary.md comparing the runs. "
                    "It prints where to point TensorBoard before training starts.",
        epilog="scenarios:\n"
               "  stable       sigmoid amplitude head, learning rate 1e-3: trains normally\n"
               "  nan_poisson  ReLU amplitude head, learning rate 3e-2: the Poisson NLL goes NaN\n"
               "\n"
               "examples:\n"
               "  ptycho-callbacks demo --out runs/demo --epochs 5\n"
               "  ptycho-callbacks demo --out runs/nan --scenario nan_poisson --N 32\n"
               "  tensorboard --logdir runs/demo   # in another terminal, while it trains",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="epochs per scenario (default: %(default)s)")
    parser.add_argument("--N", type=int, default=defaults.N, help="patch size (default: %(default)s)")
    parser.add_argument("--gridsize", type=int, default=defaults.gridsize, choices=(1, 2),
                        help="patterns per group along each axis (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="batch size (default: %(default)s)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="scenario to train (repeatable; default: all)")
    parser.add_argument("--scaler-style", default=defaults.scaler_style, choices=("keras", "ptychopinn"),
                        help="'ptychopinn' holds log_scale in a plain tf.Variable as PtychoPINN does "
                             "(Keras 3 then never trains it); 'keras' uses add_weight (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    return parser


def demo_main(argv):
    """Train the bundled model on simulated data and write logs and reports."""
    args, status = _parse(_demo_parser(), argv)
    if args is None:
        return status
    from .demo import DemoConfig, run_demo

    config = DemoConfig(N=args.N, gridsize=args.gridsize, epochs=args.epochs,
                        batch_size=args.batch_size, scaler_style=args.scaler_style)
    if args.scenario:
        config.scenarios = args.scenario
    try:
        run_demo(args.out, config, verbose=0 if args.quiet else 1)
    except (ValueError, OSError) as error:
        print(f"ptycho-callbacks demo: error: {error}", file=sys.stderr)
        return 2
    return 0


_SKIPPED_FOLDERS = (TENSORBOARD_FOLDER, FORENSICS_FOLDER)
"""Folders of a run that hold no run: not searched for records."""


def _record_paths(argument):
    """Record files named by a CLI argument: a record file, a run directory, a folder of runs, or a glob.

    A directory contributes every `record.json` in it and below it (not in
    the TensorBoard and forensics folders of a run, nor hidden folders),
    in path order. A pattern (`runs/gs2_*`, quoted so that the shell leaves
    it alone) contributes what each path it matches contributes.

    Raises:
        FileNotFoundError: the path does not exist, the pattern matches nothing, or no record is there.
    """
    if not os.path.exists(argument) and any(char in argument for char in "*?["):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{argument}: no path matches")
        found = []
        for match in matches:
            try:
                found += _record_paths(match)
            except FileNotFoundError:
                pass
        if not found:
            raise FileNotFoundError(f"{argument}: no {RECORD_FILE} in what it matches")
        return found
    if os.path.isfile(argument):
        return [argument]
    if not os.path.isdir(argument):
        raise FileNotFoundError(f"{argument}: no such file or directory")
    paths = []
    for folder, subfolders, files in os.walk(argument):
        subfolders[:] = sorted(name for name in subfolders
                               if name not in _SKIPPED_FOLDERS and not name.startswith("."))
        if RECORD_FILE in files:
            paths.append(os.path.join(folder, RECORD_FILE))
    if not paths:
        raise FileNotFoundError(f"{argument}: no {RECORD_FILE} in it or below it")
    return paths


def _report_parser():
    from .compare import DEFAULT_COLUMNS, FORMATS, columns_help

    parser = argparse.ArgumentParser(
        prog="ptycho-callbacks report",
        description="Render the run records written by the ptycho_callbacks callbacks: as one Markdown "
                    "'Intensity Bias Summary' report (one scenario per record; the default), or as one "
                    "table of chosen columns, one row per run, in Markdown, CSV or JSON.",
        epilog="examples:\n"
               "  ptycho-callbacks report runs/gs2_base runs/gs2_ne60 -o summary.md\n"
               "  ptycho-callbacks report runs/   # every record.json in runs/ and below\n"
               "  ptycho-callbacks report 'runs/gs2_*' --columns scenario,status,nphotons,final_loss "
               "--sort final_loss\n"
               "  ptycho-callbacks report runs/ --format csv -o sweep.csv\n"
               "  ptycho-callbacks report runs/ --columns help   # the columns these runs have\n"
               "\n"
               f"columns (--columns; default: {','.join(DEFAULT_COLUMNS)}):\n{columns_help()}"
               "  <loss> is `loss` and each logged loss component (pred_intensity_loss, ..., val_loss).\n"
               "\n"
               "A run that cannot be read (no record, malformed record.json) is skipped with one line on "
               "stderr.\nexit status: 0 when at least one run was rendered, 2 when none was or on a usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="RECORD_OR_RUN_DIR",
                        help=f"a {RECORD_FILE} file, a run directory, a folder of runs (searched below), "
                             "or a quoted glob pattern")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the output to this file (atomically) instead of stdout; a report of "
                             "several runs gets figures of them side by side in figures/ beside it")
    parser.add_argument("--title", default="Intensity Bias Summary", help="report title")
    parser.add_argument("--format", choices=("report",) + FORMATS,
                        help="report: the full Markdown report (default); md, csv, json: the table of --columns "
                             "(the default when --columns or --sort is given)")
    parser.add_argument("--columns", metavar="COL,COL,...",
                        help="the table's columns, comma-separated; 'help' lists those of the given runs")
    parser.add_argument("--sort", metavar="COLUMN", help="sort the runs by this column (unknown values last)")
    parser.add_argument("--desc", action="store_true", help="sort in descending order")
    return parser


def _load_records(arguments):
    """(records, their paths, one-line problems): every run the arguments name that can be read."""
    from .record import RecordError, RunRecord

    records, paths, problems = [], [], []
    found = []
    for argument in arguments:
        try:
            found += _record_paths(argument)
        except OSError as error:
            problems.append(_one_line(error))
    for path in dict.fromkeys(os.path.realpath(p) for p in found):
        try:
            records.append(RunRecord.load(path))
            paths.append(path)
        except (OSError, RecordError) as error:
            problems.append(_one_line(error))
    return records, paths, problems


def _one_line(error):
    """An error's text in one line: an OSError as `file: reason`."""
    message = str(error) if not isinstance(error, OSError) or not error.filename else \
        f"{error.filename}: {error.strerror}"
    return " ".join(message.split())


def report_main(argv):
    """Render saved run records as one Markdown report, or as a table of chosen columns (md, csv, json).

    A run that cannot be read (unreadable path, files that are no record:
    binary, not UTF-8, invalid or too deeply nested JSON, fields of the
    wrong type, a newer schema version) prints one line to stderr and is
    left out. Exit status: 0 when at least one run was rendered; 2 when
    none was (each problem then prints one `ptycho-callbacks report:
    error: ...` line), or on a usage error.
    """
    from . import compare
    from .record import RecordError, atomic_write_text

    parser = _report_parser()
    args, status = _parse(parser, argv)
    if args is None:
        return status
    prog = parser.prog
    if args.columns == "help" and not args.paths:
        sys.stdout.write(compare.columns_help())
        return 0
    if not args.paths:
        print(f"{prog}: error: give at least one record, run directory, folder of runs or pattern", file=sys.stderr)
        return 2
    output_format = args.format or ("md" if args.columns or args.sort else "report")
    if output_format == "report" and (args.columns or args.sort or args.desc):
        print(f"{prog}: error: --columns, --sort and --desc make a table: give --format md, csv or json",
              file=sys.stderr)
        return 2
    records, paths, problems = _load_records(args.paths)
    try:
        if output_format == "report":
            text, records, more = _render_records(records, paths, args.title)
            problems += more
        else:
            records, more = _readable_rows(records, paths)
            problems += more
        if not records:
            for problem in problems:
                print(f"{prog}: error: {problem}", file=sys.stderr)
            return 2
        if output_format != "report":
            if args.columns == "help":
                sys.stdout.write(compare.columns_help(records))
                return 0
            columns = [name.strip() for name in args.columns.split(",") if name.strip()] if args.columns else None
            table = compare.comparison_table(records, columns, sort=args.sort, descending=args.desc)
            text = compare.render_table(table, output_format)
        for problem in problems:
            print(f"{prog}: skipped: {problem}", file=sys.stderr)
        if args.output:
            from . import figures

            if output_format == "report" and len(records) > 1 and figures.wanted():
                text += figures.write_comparison_section(records, args.output)  # the runs side by side
            atomic_write_text(args.output, text)
        else:
            sys.stdout.write(text)
    except (OSError, RecordError, ValueError) as error:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _readable_rows(records, paths):
    """(the records whose table row can be made, a line for each other): a foreign record may hold anything."""
    from .hparams import row

    kept, problems = [], []
    for record, path in zip(records, paths):
        try:
            row(record)
            kept.append(record)
        except Exception as error:  # noqa: BLE001 - the input is untrusted; say which file and go on
            problems.append(_unreadable(path, error))
    return kept, problems


def _unreadable(path, error):
    return (f"{path}: a field holds what a record never holds ({type(error).__name__}: "
            f"{' '.join(str(error).split())}); was it written by ptycho_callbacks?")


def _render_records(records, paths, title):
    """(the report of the records it can render, those records, a line for each it cannot).

    A record from someone else may hold anything where a number or a table
    is meant: that is an error of the input, said in one line, not a traceback.
    """
    from .render import render_report

    if not records:
        return "", [], []
    try:
        return render_report(records, title=title), records, []
    except Exception:  # noqa: BLE001 - the input is untrusted; find the records and say which
        kept, problems = [], []
        for record, path in zip(records, paths):
            try:
                render_report([record], title=title)
                kept.append(record)
            except Exception as error:  # noqa: BLE001
                problems.append(_unreadable(path, error))
        return (render_report(kept, title=title) if kept else ""), kept, problems


def _replay_parser():
    parser = argparse.ArgumentParser(
        prog="ptycho-callbacks replay",
        description="Replay the failing step saved by NaNGuard(forensics=True) in RUN_DIR/nan_forensics with "
                    "per-op numeric checking, and say which layer and op made the first NaN/Inf.",
        epilog="example:\n  ptycho-callbacks replay runs/gs2_base --write",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (or its nan_forensics folder)")
    parser.add_argument("--write", action="store_true",
                        help="also store the result in RUN_DIR/record.json and re-render RUN_DIR/report.md")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of Markdown")
    parser.add_argument("--import", dest="modules", action="append", metavar="MODULE",
                        help="import MODULE first (registers the saved model's custom objects; repeatable)")
    parser.add_argument("--setup", metavar="MODULE:FUNCTION",
                        help="import MODULE and call FUNCTION(config) with the run's recorded config before the "
                             "model is loaded, to set up what its layers read when constructed (PtychoPINN's "
                             "params.cfg; the bundled model's is ptycho_callbacks.sim.params:setup)")
    parser.add_argument("--unsafe", action="store_true",
                        help="load the saved model even when that can run code from the folder (a model.keras "
                             "that is not a Keras zip archive, Lambda layers): only for a folder you trust")
    return parser


def _setup_function(spec):
    """The function `MODULE:FUNCTION` names (the user's own choice, on the command line), imported."""
    import importlib

    module_name, _, function_name = (spec or "").partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--setup {spec!r}: expected MODULE:FUNCTION, e.g. ptycho_callbacks.sim.params:setup")
    function = importlib.import_module(module_name)
    for part in function_name.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise ValueError(f"--setup {spec!r}: {module_name} has no function {function_name!r}")
    return function


def _write_back(run_dir, result):
    from .figures import existing_figures, figures_text
    from .record import RunRecord, atomic_write_text
    from .render import render_report

    path = record_path(run_dir)
    record = RunRecord.load(path)
    record.forensics = result
    record.save(path)
    report = render_report(record) + figures_text(existing_figures(run_dir), run_dir)  # the run's figures stay linked
    atomic_write_text(report_path(run_dir), report)
    return path


def replay_main(argv):
    """Replay a run's saved NaN step to name the layer and op that went non-finite first.

    Errors print one `ptycho-callbacks replay: error: ...` line on stderr (exit 2).
    """
    from .nan import capture
    from .nan.replay import replay_folder
    from .record import RecordError, encode_nonfinite, to_builtin
    from .render import forensics_lines, markdown_safe

    parser = _replay_parser()
    args, status = _parse(parser, argv)
    if args is None:
        return status
    try:
        setup = _setup_function(args.setup) if args.setup else None
        folder = capture.find_folder(args.run_dir)
        result = replay_folder(folder, modules=args.modules, unsafe=args.unsafe, setup=setup)
        if args.write:
            run_dir = os.path.dirname(os.path.abspath(folder))
            result["written_to"] = _write_back(run_dir, result)
    except (capture.ForensicsError, OSError, RecordError, ImportError, ValueError) as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a folder from someone else may hold anything
        print(f"{parser.prog}: error: {args.run_dir}: the saved step cannot be replayed ({type(error).__name__}: "
              f"{' '.join(str(error).split())[:500]})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(encode_nonfinite(to_builtin(result)), indent=2, allow_nan=False))
    else:
        print("\n".join(forensics_lines(markdown_safe(result))))
    return 0


COMMANDS = {"demo": demo_main, "report": report_main, "replay": replay_main}


def _main_parser():
    summaries = "\n".join(f"  {name:<8}{command.__doc__.splitlines()[0]}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="ptycho-callbacks",
        usage="ptycho-callbacks {%s} [options]" % ",".join(COMMANDS),
        description="Tools of ptycho_callbacks, the Keras callbacks that show what happens inside "
                    "PtychoPINN trainings.",
        epilog=f"commands:\n{summaries}\n\n"
               "`ptycho-callbacks COMMAND --help` says more about each.\n\n"
               "examples:\n"
               "  ptycho-callbacks demo --out runs/demo\n"
               "  ptycho-callbacks report runs/gs2_base runs/gs2_ne60 -o summary.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    """Runs one command; returns its exit status (0 ok, 2 usage or input error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _main_parser()
    try:
        if not argv:
            parser.error(f"give a command: {', '.join(COMMANDS)} (see --help)")
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    return COMMANDS[args.command](args.args)


if __name__ == "__main__":
    sys.exit(main())
