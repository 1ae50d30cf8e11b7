"""The `ptycho-callbacks` command: `demo` trains the bundled model, `report` renders records."""

import argparse
import sys


def _demo_parser():
    from .demo import SCENARIOS, DemoConfig

    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="ptycho-callbacks demo",
        description="Train the bundled stand-in PtychoPINN model on simulated data, one run "
                    "per scenario, and write TensorBoard logs and the summary report.",
        epilog="example: ptycho-callbacks demo --out runs/demo --epochs 5")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--N", type=int, default=defaults.N, help="patch size")
    parser.add_argument("--gridsize", type=int, default=defaults.gridsize, choices=(1, 2))
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="scenario to train (repeatable; default: all)")
    parser.add_argument("--scaler-style", default=defaults.scaler_style, choices=("keras", "ptychopinn"))
    parser.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    return parser


def demo_main(argv):
    args = _demo_parser().parse_args(argv)
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
    from .render import report_main as render_report_main

    return render_report_main(argv)


COMMANDS = {"demo": demo_main, "report": report_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: ptycho-callbacks {%s} [options]\n\n"
              "  demo    train the bundled model on simulated data (see demo --help)\n"
              "  report  render saved run records into one report (see report --help)"
              % ",".join(COMMANDS), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
