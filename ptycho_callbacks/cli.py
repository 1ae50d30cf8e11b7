"""The `ptycho-callbacks` command: `demo` trains the bundled model, `report` renders records."""

import argparse
import sys


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
    try:
        args = _demo_parser().parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
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


def report_main(argv):
    """Render saved run records as one Markdown report comparing the runs."""
    from .render import report_main as render_report_main

    return render_report_main(argv)


def replay_main(argv):
    """Replay a run's saved NaN step to name the layer and op that went non-finite first."""
    from .forensics.replay import replay_main as forensics_replay_main

    return forensics_replay_main(argv)


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
