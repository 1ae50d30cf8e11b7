"""The small simulated data set of the tests, for the `small_data` fixture and the tests' own processes."""


def simulate_small_data():
    """N=16, gridsize 2, a 5x5 scan, 1e6 photons, seed 3: small enough for a training in seconds."""
    from ptycho_callbacks.sim.data import simulate

    return simulate(N=16, gridsize=2, n_scan=5, nphotons=1e6, seed=3)
