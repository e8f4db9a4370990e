"""Fixed quadrature rules behind the negative-binomial variable-nabla (array-library free).

``g_r(y) = −∂_a I_x(a, b) / q(y)`` (``a = r``, ``b = y + 1``, ``x = 1 − p``) is, in the
logit ``v`` of a ``Beta(a, b)`` variable ``T`` and with ``h = v − logit(x)``,

    ``g_r = ∓ (a + b − 1) p ∫ e^{Λ(v_x + h) − Λ(v_x)} (log σ(v_x + h) − E[log T]) dh``,

``Λ(v) = a v − (a + b) softplus(v)``, over ``h < 0`` (sign ``−``) when
``log x < E[log T] = ψ(a) − ψ(a + b)`` and over ``h > 0`` (sign ``+``) otherwise, so that
the integrand keeps one sign (no cancellation).  ``Λ`` is concave: the integrand is a
one-sided, log-concave bump.  Going down it decays at least exponentially; going up it
may first run along a plateau (small ``a``) and then falls off double-exponentially, so
that side is split where the log-slope reaches −1: tanh-sinh on the plateau, exp-exp
beyond it.  Both rules are trapezoidal rules after a double-exponential change of
variables (Takahasi & Mori 1974; Mori & Sugihara 2001), whose error falls exponentially
with the number of nodes for integrands analytic in a strip; with a step of 1/8 they keep
~1e-14 on model integrands whose scale is misjudged by a factor of up to ~30.  The
scale is ``1/(|Λ'| + sqrt|Λ''|)`` where each piece starts.  Checked against 30-digit
references (``mpmath.quad``) on 409 points with ``a`` from 1e-4 to 1e7, ``x`` from 1e-9
to ``1 − 1e-6`` and ``b`` up to 5e10: relative error below 2e-10.
"""

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
