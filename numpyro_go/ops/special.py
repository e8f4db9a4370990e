"""Sums behind the variable-nablas of count distributions, jit-safe.

The variable-nabla of a distribution on ``{0, 1, 2, ...}`` is
``g_η(y) = −∂_η Q(y) / q(y)`` with ``∂_η Q(y) = Σ_{k≤y} q(k) ∂_η log q(k)``
(Cong et al. 2019, eq. 8 and appendix A.2).  Under ``jax.jit`` the largest count is not
known when the function is traced, so the sum over ``k = 0..max(y)`` runs in a
``lax.while_loop``: one pass per ``k``, all elements at once, each accumulating only while
``k ≤ y``.  Weights ``q(k) / q(y)`` are formed in log space so they never overflow.
Variable-nablas are multiplied by ``stop_gradient(Δ)`` and held fixed, so the loops are
only ever evaluated forward (``while_loop`` has no reverse-mode derivative).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import digamma, gammaln, xlogy


def head_sum(
    log_q: Callable[[jax.Array], jax.Array],
    term: Callable[[jax.Array], object],
    value: jax.Array,
):
    """``Σ_{k≤y} [q(k)/q(y)] · term(k)`` elementwise, for a pytree-valued ``term``.

    :param log_q: ``k ↦ log q(k)`` (up to a constant in ``k``), elementwise over
        ``value``'s shape; called with ``k = min(step, y)`` so it stays in the support.
    :param term: ``k ↦`` a pytree of arrays of ``value``'s shape.
    :param value: the sampled counts ``y``.
    """
    value = lax.stop_gradient(value)
    log_q_value = log_q(value)
    zero = jax.tree.map(jnp.zeros_like, term(value))
    top = jnp.max(value) if value.size else jnp.zeros((), value.dtype)

    def body(carry):
        step, total = carry
        k = jnp.minimum(step, value)
        weight = jnp.where(step <= value, jnp.exp(log_q(k) - log_q_value), 0.0)
        total = jax.tree.map(lambda acc, t: acc + weight * t, total, term(k))
        return step + 1, total

    _, total = lax.while_loop(lambda carry: carry[0] <= top, body, (jnp.zeros_like(top), zero))
    return total


def negative_binomial_total_count_nabla(
    value: jax.Array, total_count: jax.Array, probs: jax.Array
) -> jax.Array:
    """Variable-nabla of ``NegativeBinomial(r, p)`` (mean ``r p/(1−p)``) in ``r``:
    ``g_r(y) = −Σ_{k≤y} [q(k)/q(y)] (ψ(k+r) − ψ(r) + log(1−p))`` (Cong et al. 2019,
    appendix A, Table 3)."""
    value, r, p = jnp.broadcast_arrays(*(lax.stop_gradient(x) for x in (value, total_count, probs)))
    value = value.astype(r.dtype)

    def log_q(k):  # up to terms constant in k
        return gammaln(k + r) - gammaln(k + 1) + xlogy(k, p)

    def score_r(k):
        return digamma(k + r) - digamma(r) + jnp.log1p(-p)

    return -head_sum(log_q, score_r, value)
