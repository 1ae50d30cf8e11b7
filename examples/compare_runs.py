"""Compare finished runs in one report, as `ptycho-callbacks report RUN...` does.

Run: python examples/compare_runs.py runs/gs2_base runs/gs2_ne60 -o summary.md
"""

import argparse

from ptycho_callbacks import render_report
from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.run_dir import record_path


def main(run_dirs, output=None):
    records = [RunRecord.load(record_path(run_dir)) for run_dir in run_dirs]
    report = render_report(records, title="Scenario comparison")
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(report)
    else:
        print(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    main(args.run_dirs, args.output)
