"""Read a run's record in Python: the status, log_scale, the loss per epoch, the first NaN event.

Run: python examples/read_record.py runs/gs2_base
"""

import argparse

from ptycho_callbacks.record import RunRecord
from ptycho_callbacks.run_dir import record_path


def main(run_dir):
    record = RunRecord.load(record_path(run_dir))
    print(f"{record.scenario}: {record.status}, {len(record.history.get('loss', []))} epoch(s)")
    if record.log_scale.get("found"):
        print(f"log_scale {record.log_scale['initial']:.4g} -> {record.log_scale['final']:.4g}")
    for name, values in record.history.items():
        if name.endswith("loss") and values:
            print(f"{name}: first {values[0]:.4g}, last {values[-1]:.4g}")
    if record.nan_events:
        event = record.nan_events[0]
        print(f"first NaN/Inf: {', '.join(event['components'])} at step {event['step']}")
    for finding in record.findings:
        print(f"{finding['level']}: {finding['code']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    main(parser.parse_args().run_dir)
