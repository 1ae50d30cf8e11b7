"""The fixtures shared by the test modules, and the check that every test has exactly one suite marker.

Each test module says which part of the suite it belongs to (setup.cfg
registers the markers): `core` (numpy only, no TensorFlow: one Keras pass is
enough), `keras` (runs under Keras 3 and again under tf_keras) or `slow`
(end to end runs that take long and run once). `python -m pytest` runs them
all; CI (.ci/run) runs `-m "keras"` under Keras 3 and `-m "keras or slow or core"`
under tf_keras.

Nothing here imports TensorFlow at import time: the `core` tests must run
without it.
"""

import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Drawing a run's figures takes 1 to 3 s at its close; the figure tests switch them on (test_figures*.py).
os.environ.setdefault("PTYCHO_CALLBACKS_FIGURES", "0")

import pytest  # noqa: E402

from small_data import simulate_small_data  # noqa: E402

SUITE_MARKERS = ("core", "keras", "slow")

DEMO_CONFIG = dict(epochs=3)
"""The demo the `demo` fixture trains: the default scenarios, data and model (N=64, 64 groups in batches of
16: 4 steps per epoch), 3 epochs."""


def pytest_collection_modifyitems(config, items):
    """Refuses a test without a suite marker, or with more than one: it would run in no pass, or twice."""
    wrong = []
    for item in items:
        marks = sorted({mark.name for mark in item.iter_markers() if mark.name in SUITE_MARKERS})
        if len(marks) != 1:
            wrong.append(f"{item.nodeid}: {marks or 'no suite marker'}")
    if wrong:
        raise pytest.UsageError(f"every test needs exactly one of the markers {', '.join(SUITE_MARKERS)}:\n"
                                + "\n".join(wrong))


@pytest.fixture(scope="session")
def small_data():
    return simulate_small_data()


@pytest.fixture(scope="session")
def make_model(small_data):
    """make_model(random_seed=None, run_eagerly=False, **kwargs) -> a new stand-in model on `small_data`.

    N=16, gridsize 2, 4 filters, the data's probe and intensity scale; kwargs go
    to `build_model`. With `random_seed`, Keras's global seeds are set first
    (weights, shuffling). Every call builds a new model: a test that trains one
    gets it untouched (test_nan_guard and test_faults keep one per module and
    reset its weights and optimizer state themselves).
    """
    from ptycho_callbacks._keras import keras
    from ptycho_callbacks.sim.model import build_model

    def make(random_seed=None, run_eagerly=False, **kwargs):
        if random_seed is not None:
            keras.utils.set_random_seed(random_seed)
        model = build_model(N=16, gridsize=2, n_filters=4, probe=small_data.probe,
                            intensity_scale=small_data.intensity_scale, **kwargs)
        if run_eagerly:
            model.run_eagerly = True
        return model

    return make


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo (`run_demo` with the whole suite, both scenarios), trained once for the whole session.

    Tests only read what it wrote: `out` (the output directory), `config`,
    `histories` (scenario -> keras History), `records` (scenario -> RunRecord)
    and `lines` (what it logged).
    """
    from ptycho_callbacks.demo import DemoConfig, run_demo
    from ptycho_callbacks.record import RunRecord

    out = str(tmp_path_factory.mktemp("demo"))
    config = DemoConfig(**DEMO_CONFIG)
    lines = []
    histories = run_demo(out, config, verbose=0, log=lines.append)
    records = {name: RunRecord.load(os.path.join(out, name, "record.json")) for name in config.scenarios}
    return types.SimpleNamespace(out=out, config=config, histories=histories, records=records, lines=lines)
