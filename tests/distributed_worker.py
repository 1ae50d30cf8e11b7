"""One process of the distributed tests: trains with the whole suite and prints its history as JSON.

Usage: python distributed_worker.py MODE RUN_DIR [WORKER_INDEX PORT,PORT]
MODE is "single" (one device), "mirrored" (MirroredStrategy over two logical
CPU devices) or "multiworker" (MultiWorkerMirroredStrategy). With
WORKER_INDEX and ports, TF_CONFIG describes a loopback cluster of which this
process is worker WORKER_INDEX.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cluster(index, ports):
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                                          "task": {"type": "worker", "index": index}})


def main(mode, run_dir, index=None, ports=None):
    if index is not None:
        _cluster(int(index), ports.split(","))
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    from ptycho_callbacks import default_callbacks
    from ptycho_callbacks._keras import keras
    from ptycho_callbacks.sim.model import build_model
    from small_data import simulate_small_data

    data = simulate_small_data()
    keras.utils.set_random_seed(4)
    with strategy.scope():
        model = build_model(N=16, gridsize=2, n_filters=4, probe=data.probe, intensity_scale=data.intensity_scale,
                            loss_weights=(0.0, 1.0, 1.0), probe_variable=False)  # collectives refuse complex
    stages = [dict(name="container_X", array=data.container_X)]
    callbacks = default_callbacks(model, run_dir, stages=stages, verbose=0)
    history = model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=2, shuffle=False,
                        verbose=0, callbacks=callbacks)
    print("HISTORY " + json.dumps({"pid": os.getpid(), "history": history.history}), flush=True)
    assert all(callback.is_chief == (index is None or int(index) == 0) for callback in callbacks)


if __name__ == "__main__":
    main(*sys.argv[1:])
