"""Multi-device training: MirroredStrategy gives the single-device values, and only the chief writes.

Each training runs in its own process (`distributed_worker.py`): logical CPU
devices and TF_CONFIG must be set before TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from ptycho_callbacks.record import RunRecord

import tensorboard_events

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _start(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("TF_CONFIG", None)
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"worker failed ({process.returncode}):\n{err[-4000:]}"
    (line,) = [line for line in out.splitlines() if line.startswith("HISTORY ")]
    return json.loads(line[len("HISTORY "):])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.keras
def test_mirrored_strategy_gives_the_single_device_values(tmp_path):
    single, mirrored = str(tmp_path / "single"), str(tmp_path / "mirrored")
    results = {run: _finish(_start([mode, run])) for mode, run in (("single", single), ("mirrored", mirrored))}
    assert results[single]["history"].keys() == results[mirrored]["history"].keys()
    for name, values in results[single]["history"].items():
        assert results[mirrored]["history"][name] == pytest.approx(values, rel=1e-5), name

    one, two = (RunRecord.load(os.path.join(run, "record.json")) for run in (single, mirrored))
    assert one.status == two.status == "completed"
    assert one.batch_steps == two.batch_steps == [1, 2, 3, 4]
    for name, values in one.batch_history.items():
        assert two.batch_history[name] == pytest.approx(values, rel=1e-4), name
    assert two.log_scale["final"] == pytest.approx(one.log_scale["final"], rel=1e-6)
    assert two.history["loss"] == pytest.approx(one.history["loss"], rel=1e-5)
    for run in (single, mirrored):
        tags = tensorboard_events.scalars(run)
        assert len(tags["loss/batch/pred_intensity_loss"]) == 4 and "scale/epoch/log_scale" in tags
        assert os.path.exists(os.path.join(run, "report.md"))


@pytest.mark.slow
def test_multi_worker_only_the_chief_writes(tmp_path):
    """Keras 3.15 cannot fit under MultiWorkerMirroredStrategy (its symbolic build fails on
    PerReplica values), so the two workers run tf_keras, as PtychoPINN does."""
    run = str(tmp_path / "run")
    ports = ",".join(str(port) for port in _free_ports(2))
    legacy = {"TF_USE_LEGACY_KERAS": "1"}
    workers = [_start(["multiworker", run, str(index), ports], legacy) for index in (0, 1)]
    chief, other = (_finish(worker) for worker in workers)
    assert chief["history"]["loss"] == pytest.approx(other["history"]["loss"], rel=1e-6)

    written = [os.path.join(root, name) for root, _, names in os.walk(run) for name in names]
    event_files = [path for path in written if "tfevents" in path]
    assert event_files and all(f".{chief['pid']}." in os.path.basename(path) for path in event_files), event_files
    assert not any(f".{other['pid']}." in path for path in written)
    record = RunRecord.load(os.path.join(run, "record.json"))
    assert record.status == "completed" and len(record.history["loss"]) == 2
    assert os.path.exists(os.path.join(run, "report.md"))


@pytest.mark.keras
def test_a_non_chief_worker_writes_nothing(tmp_path):
    """Under this process's Keras version: TF_CONFIG naming this process worker 1 is enough."""
    run = tmp_path / "run"
    ports = ",".join(str(port) for port in _free_ports(2))
    result = _finish(_start(["single", str(run), "1", ports]))
    assert len(result["history"]["loss"]) == 2
    assert not run.exists() or not any(run.iterdir())
