"""The statistical check behind every unbiasedness test, for both backends."""

import math

import numpy as np


def assert_unbiased(samples, exact, num_sigma=5.0, min_power=0.5):
    """``|mean − exact| < num_sigma · stderr`` for every coordinate of ``samples``
    (``[num_samples, dim]``, any array type numpy can read) against ``exact`` (``[dim]``).

    Also checks the test has power: for the coordinate with the largest exact
    gradient, ``num_sigma · stderr`` must be below ``min_power · |exact|``; otherwise a
    wrong estimator could pass unnoticed and more samples are needed.
    """
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / math.sqrt(samples.shape[0])
    error = np.abs(mean - exact)
    tolerance = num_sigma * stderr + 1e-7 * np.abs(exact) + 1e-9
    message = f"\nexact  {exact.tolist()}\nmean   {mean.tolist()}\nstderr {stderr.tolist()}"
    assert (error < tolerance).all(), "biased gradient" + message
    biggest = np.abs(exact).argmax()
    assert num_sigma * stderr[biggest] < min_power * abs(exact[biggest]), (
        "test has too little power" + message
    )
