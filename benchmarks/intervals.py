"""Bootstrap 95% intervals, and how an interval reads against a target."""

import numpy as np


def interval(values):
    """[2.5th, 97.5th percentile] of bootstrap resamples."""
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def paired_interval(statistic, *columns, resamples=2000, seed=0):
    """The 95% interval of `statistic(*columns)` over resamples of whole repetitions.

    Each column holds one value per repetition; every column is drawn with
    the same repetitions, so that a suite's value stays with the bare
    value measured beside it.
    """
    columns = [np.asarray(column, dtype=float) for column in columns]
    generator = np.random.default_rng(seed)
    count = len(columns[0])
    draws = (generator.integers(0, count, count) for _ in range(resamples))
    return interval([statistic(*(column[draw] for column in columns)) for draw in draws])


def verdict(low, high, target):
    """How the interval [low, high] of a figure reads against its upper bound `target`.

    "met" when the whole interval is within it, "not met" when none of it
    is, "not resolved" when it straddles the target: then this machine's
    noise cannot tell.
    """
    if high <= target:
        return "met"
    if low > target:
        return "not met"
    return "not resolved"
