import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_data():
    from ptycho_callbacks.sim.data import simulate

    return simulate(N=16, gridsize=2, n_scan=5, nphotons=1e6, seed=3)
