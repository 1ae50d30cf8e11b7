"""The fixtures shared by the test modules, and the check that every test has exactly one suite marker.

Each test module says which part of the suite it belongs to (setup.cfg
registers the markers): `core` (numpy only, no TensorFlow: one Keras pass is
enough), `keras` (runs under Keras 3 and again under tf_keras) or `slow`
(end to end runs that take long and run once). CI runs everything under
Keras 3 and `-m keras` under tf_keras.

Nothing here imports TensorFlow at import time: the `core` tests must run
without it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from small_data import simulate_small_data  # noqa: E402

SUITE_MARKERS = ("core", "keras", "slow")


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

