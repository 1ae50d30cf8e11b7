import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from small_data import simulate_small_data  # noqa: E402


@pytest.fixture(scope="session")
def small_data():
    return simulate_small_data()
