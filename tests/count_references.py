"""Float64 / 30-digit references for the negative-binomial variable-nabla in ``r``,
independent of the code under test (shared by both backends' tests).

``g_r(y) = −∂_r Q(y) / q(y)`` with ``Q(y) = I_{1−p}(r, y + 1)`` and
``∂_a I_x(a, b) = ∫_0^x t^{a−1}(1−t)^{b−1}(log t − ψ(a) + ψ(a+b)) dt / B(a, b)``.
"""

import math

import mpmath as mp
import numpy as np
from scipy.special import digamma, gammaln

#: ``NegativeBinomial(5, MEAN_1E10)`` has mean ``5 p / (1 − p) ≈ 1e10``
MEAN_1E10 = 1 - 5e-10


def nb_nabla_mpmath(y, r, p, complement=None, dps: int = 30) -> float:
    """``g_r(y)`` by ``mpmath.quad`` in the beta variable ``t`` on the side of ``x = 1 − p``
    where ``log t − E[log T]`` keeps one sign, with breakpoints spread geometrically
    around ``x`` on the scale of the beta's width in the logit."""
    with mp.workdps(dps):
        r, y = mp.mpf(r), mp.mpf(y)
        x = mp.mpf(1) - mp.mpf(p) if complement is None else mp.mpf(complement)
        b = y + 1
        c = mp.digamma(r) - mp.digamma(r + b)
        log_q = (
            mp.loggamma(y + r) - mp.loggamma(r) - mp.loggamma(b) + y * mp.log1p(-x) + r * mp.log(x)
        )
        log_beta = mp.loggamma(r) + mp.loggamma(b) - mp.loggamma(r + b)

        def f(t):
            log_density = (r - 1) * mp.log(t) + (b - 1) * mp.log1p(-t) - log_beta - log_q
            return mp.exp(log_density) * (mp.log(t) - c)

        width = 1 / mp.sqrt(r * b / (r + b)) if r * b / (r + b) > 1 else mp.mpf(1)
        v_x = mp.log(x) - mp.log1p(-x)
        offsets = [width * mp.mpf(2) ** k for k in range(-6, 16)]
        if mp.log(x) < c:
            points = [mp.mpf(0)] + sorted(mp.sigmoid(v_x - d) for d in offsets) + [x]
            return float(-mp.quad(f, points))
        points = [x] + sorted(mp.sigmoid(v_x + d) for d in offsets) + [mp.mpf(1)]
        return float(mp.quad(f, points))


def nb_nabla_log_space_sum(y: int, r: float, p: float, block: int = 1 << 17) -> float:
    """``g_r(y)`` as a float64 sum in log space (``math.fsum``) over the side of ``y``
    where every term has one sign: the head ``k ≤ y``, or the tail ``k > y`` until its
    weights fall below 1e-30.  Good to ~1e-9 at ``y ~ 1e6`` (``lgamma`` rounding)."""

    def log_q(k):
        return gammaln(k + r) - gammaln(k + 1) + k * np.log(p)

    def score(k):
        return digamma(k + r) - digamma(r) + np.log1p(-p)

    log_q_y = log_q(float(y))
    if np.log1p(-p) < digamma(r) - digamma(r + y + 1):
        k = np.arange(0, y + 1, dtype=np.float64)
        return -math.fsum(np.exp(log_q(k) - log_q_y) * score(k))
    terms, start = [], y + 1
    while True:
        k = np.arange(start, start + block, dtype=np.float64)
        weights = np.exp(log_q(k) - log_q_y)
        terms.append(weights * score(k))
        if weights[-1] < 1e-30 and weights[-1] < weights[0]:
            return math.fsum(np.concatenate(terms))
        start += block
