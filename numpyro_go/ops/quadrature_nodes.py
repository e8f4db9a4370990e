"""Fixed quadrature rules behind the negative-binomial variable-nabla (array-library
free): the twin of :mod:`pyro_go.ops.quadrature_nodes`, whose docstring derives the
integral they serve (this package cannot import that one without torch)."""

from __future__ import annotations

import numpy as np

#: counts at most this large are summed exactly (where the terms keep one sign)
EXACT_HEAD_COUNTS = 64

_STEP = 1 / 8


def exp_exp_rule(step: float = _STEP, t_min: float = -3.5, t_max: float = 7.0):
    """Nodes and weights for ``∫_0^∞ f(u) du`` with ``u = exp(t − e^{−t})``: suited to
    integrands that decay exponentially on a scale of ~1 (Mori & Sugihara 2001)."""
    t = np.arange(t_min, t_max + step / 2, step)
    u = np.exp(t - np.exp(-t))
    return u, step * u * (1 + np.exp(-t))


def tanh_sinh_rule(step: float = _STEP, t_max: float = 3.5):
    """Nodes and weights for ``∫_0^1 f(u) du`` with ``u = (1 + tanh(π/2 sinh t))/2``
    (Takahasi & Mori 1974)."""
    t = np.arange(-t_max, t_max + step / 2, step)
    a = np.pi / 2 * np.sinh(t)
    return (1 + np.tanh(a)) / 2, step * np.pi / 4 * np.cosh(t) / np.cosh(a) ** 2


EXP_EXP = exp_exp_rule()
TANH_SINH = tanh_sinh_rule()


def digamma_difference_series(a, b):
    """``A(a) − A(b)`` for ``ψ(z) = log z + A(z)``, from the asymptotic series
    ``A(z) = −1/(2z) − Σ_k B_{2k}/(2k z^{2k})`` (Abramowitz & Stegun 6.3.18) to
    ``z^{−10}``: below 1e-16 for ``z ≥ 16``.  Works on any array type."""
    coefficients = (-1 / 12, 1 / 120, -1 / 252, 1 / 240, -1 / 132)

    def series(z):
        inverse_square = 1 / (z * z)
        total = 0.0
        for coefficient in reversed(coefficients):
            total = (total + coefficient) * inverse_square
        return total - 1 / (2 * z)

    return series(a) - series(b)
