"""Sums behind the variable-nablas of count distributions, jit-safe and at bounded cost
per element (the JAX twin of :mod:`pyro_go.ops.special`).

The variable-nabla of a distribution on ``{0, 1, 2, ...}`` is
``g_η(y) = −∂_η Q(y) / q(y)`` with ``∂_η Q(y) = Σ_{k≤y} q(k) ∂_η log q(k)``
(Cong et al. 2019, eq. 8 and appendix A.2).  Nothing here loops up to ``max(y)``: the
negative binomial's nabla sums at most
:data:`~numpyro_go.ops.quadrature_nodes.EXACT_HEAD_COUNTS` terms or integrates with a
fixed number of nodes, and :func:`windowed_count_sum` stops each element at the first
side of ``y`` that ends, within :data:`COUNT_SUM_CAP` steps.  Loops are
``lax.fori_loop``/``lax.while_loop`` over elementwise steps (memory of one batch), and
are only evaluated forward: variable-nablas are multiplied by ``stop_gradient(Δ)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import digamma

from numpyro_go.ops.quadrature_nodes import (
    EXACT_HEAD_COUNTS,
    EXP_EXP,
    TANH_SINH,
    digamma_difference_series,
)

#: most terms a side of :func:`windowed_count_sum` may take before giving up
COUNT_SUM_CAP = 1 << 14
#: a tail is finished once its weights ``q(k)/q(y)`` fall below this and decrease
NEGLIGIBLE_WEIGHT = 2.0**-60
#: a side whose weights ``q(k)/q(y)`` exceed this cancels to fewer digits than float64
#: rounding allows for (~1e-7 relative): it is given up for the other side
LARGEST_WEIGHT = 2.0**30


_SITE: ContextVar[str | None] = ContextVar("numpyro_go_count_site", default=None)


@contextmanager
def naming_count_site(where: str) -> Iterator[None]:
    """Name the site whose variable-nabla is being traced, for
    :class:`CountSumOutOfReach`: rules do not know site names, so the ELBO (and
    ``go_surrogate``) wrap their call to the rule in this context.  The name is read
    when the function is traced, so it reaches errors raised under ``jit`` too."""
    token = _SITE.set(where)
    try:
        yield
    finally:
        _SITE.reset(token)


class CountSumOutOfReach(ValueError):
    """A sum ``Σ_k q(k) ∂ log q(k)`` that neither side of ``y`` finishes within the cap.
    The message names the site given by :func:`naming_count_site`.  Under ``jit`` it is
    raised from a host callback when the step runs (JAX wraps it in its runtime error)."""

    def __init__(self, count: float, cap: int, site: str | None = None):
        self.count = count
        self.cap = cap
        self.site = site
        super().__init__(
            f"{site or 'GO variable-nabla'}: no side of Σ_k q(k) ∂log q(k) ends for the count "
            f"{count:.6g}: the head (down to 0) and the tail (until negligible) each need "
            f"more than {cap} terms or cancel (terms above 2^30 q(y)). Register a rule with "
            "a closed-form variable-nabla for this distribution (numpyro_go.register_go_rule), "
            "or raise numpyro_go.ops.special.COUNT_SUM_CAP."
        )


def _raise_if_open(site, all_done, open_count):
    if not bool(all_done):
        raise CountSumOutOfReach(float(open_count), COUNT_SUM_CAP, site)


def digamma_difference(a: jax.Array, m: jax.Array) -> jax.Array:
    """``ψ(a) − ψ(a + m)`` without the cancellation of the plain difference at large ``a``."""
    large = a >= 16
    safe = jnp.where(large, a, 16.0)
    asymptotic = -jnp.log1p(m / safe) + digamma_difference_series(safe, safe + m)
    return jnp.where(large, asymptotic, digamma(a) - digamma(a + m))


def _exact_head(y, r, p, log_x):
    """``−Σ_{k≤y} [q(k)/q(y)] (ψ(k+r) − ψ(r) + log(1−p))`` for ``y ≤ EXACT_HEAD_COUNTS``,
    with ``log q(k)/q(y) = Σ_{k≤j<y} log[(j + 1)/((j + r) p)]``."""
    top = jnp.minimum(y, EXACT_HEAD_COUNTS)

    def step(j):  # log q(j)/q(j + 1)
        return jnp.log(j + 1) - jnp.log(j + r) - jnp.log(p)

    def total_steps(j, acc):
        return acc + jnp.where(j < top, step(j), 0.0)

    below_y = lax.fori_loop(0, EXACT_HEAD_COUNTS, total_steps, jnp.zeros_like(y))

    def accumulate(k, carry):
        below_k, acc = carry  # Σ_{j<k} log q(j)/q(j+1) = log q(0)/q(k)
        score = log_x - digamma_difference(r, jnp.full_like(y, k))
        acc = acc + jnp.where(k <= top, jnp.exp(below_y - below_k) * score, 0.0)
        return below_k + step(k), acc

    zero = jnp.zeros_like(y)
    _, total = lax.fori_loop(0, EXACT_HEAD_COUNTS + 1, accumulate, (zero, zero))
    return -total


def _quadrature(y, r, p, x, log_x):
    """``g_r(y)`` from ``∂_a I_x(a, b)`` at ``a = r, b = y + 1`` by quadrature in the logit
    of the beta variable (see :mod:`numpyro_go.ops.quadrature_nodes`)."""
    n = r + y + 1
    log_p = jnp.log(p)
    v_x = log_x - log_p
    c = digamma_difference(r, y + 1)
    lower = log_x < c

    def integrand(h):
        below = jnp.log1p(x * jnp.expm1(jnp.minimum(h, 0.0)))
        hp = jnp.maximum(h, 0.0)
        above = jax.nn.softplus(log_x + hp + jnp.log(-jnp.expm1(-hp)))
        rise = jnp.where(h < 0, below, above)
        return jnp.exp(r * h - n * rise) * (log_x + h - rise - c)

    s = (r + 1) / n
    split = jnp.log(s) - jnp.log1p(-s) - v_x
    split = jnp.where(lower | ~(split > 0), 0.0, split)
    direction = jnp.where(lower, -1.0, 1.0)
    sigma = jax.nn.sigmoid(v_x + split)
    length = 1 / (jnp.abs(r - n * sigma) + jnp.sqrt(n * sigma * (1 - sigma)))

    def add(nodes, weights, at):
        nodes, weights = (jnp.asarray(t, dtype=y.dtype) for t in (nodes, weights))

        def body(i, acc):
            return acc + weights[i] * integrand(at(nodes[i]))

        return lax.fori_loop(0, len(nodes), body, jnp.zeros_like(y))

    plateau = split * add(*TANH_SINH, lambda u: split * u)
    tail = length * add(*EXP_EXP, lambda u: direction * (split + length * u))
    return direction * (n - 1) * p * (plateau + tail)


def negative_binomial_total_count_nabla(
    value: jax.Array, total_count: jax.Array, probs: jax.Array, complement=None
) -> jax.Array:
    """Variable-nabla of ``NegativeBinomial(r, p)`` (mean ``r p/(1−p)``) in ``r``:
    ``g_r(y) = −Σ_{k≤y} [q(k)/q(y)] (ψ(k+r) − ψ(r) + log(1−p))`` (Cong et al. 2019,
    appendix A, Table 3), i.e. ``−∂_a I_x(a, b)/q(y)`` at ``a = r, b = y + 1, x = 1 − p``.

    Small counts on the side where every term has one sign are summed exactly; all others
    integrate ``∂_a I_x`` with a fixed number of nodes, with the same accuracy as
    :func:`pyro_go.ops.special.negative_binomial_total_count_nabla` (relative error below
    2e-10 against 30-digit references from ``r`` = 1e-4 to 1e7 and counts up to 5e10).
    Both are computed for every element and one is selected, so the cost per element is
    fixed.  Use float64 (``jax_enable_x64``) for that accuracy.

    :param complement: ``1 − probs`` where the caller knows it more accurately.
    """
    args = (value, total_count, probs) + (() if complement is None else (complement,))
    arrays = jnp.broadcast_arrays(*(lax.stop_gradient(jnp.asarray(a)) for a in args))
    r, p = arrays[1], arrays[2]
    y = arrays[0].astype(r.dtype)
    x = 1 - p if complement is None else arrays[3]
    log_x = jnp.log1p(-p) if complement is None else jnp.log(x)
    lower = log_x < digamma_difference(r, y + 1)
    exact = (y == 0) | ((y <= EXACT_HEAD_COUNTS) & lower)
    return jnp.where(exact, _exact_head(y, r, p, log_x), _quadrature(y, r, p, x, log_x))


def windowed_count_sum(
    log_q: Callable[[jax.Array], jax.Array],
    term: Callable[[jax.Array], object],
    value: jax.Array,
    upper_bound=None,
):
    """``Σ_{k≤y} [q(k)/q(y)] · term(k)``, or minus the same sum over ``k > y``, per element,
    for a pytree-valued ``term`` (``Σ_k q(k) ∂ log q(k) = 0`` makes the two equal).

    Each step adds one term below ``y`` (walking down to 0) and one above (walking up);
    an element stops at the first side that ends: the head at ``k = 0`` (exact) or the
    tail at ``upper_bound`` or once its weights have fallen below
    :data:`NEGLIGIBLE_WEIGHT` and decrease.  A side with a weight above
    :data:`LARGEST_WEIGHT` (where the terms cancel) is given up.  The loop stops when
    every element has ended or after :data:`COUNT_SUM_CAP` steps; elements still open
    then raise :class:`CountSumOutOfReach` (from a host callback under ``jit``, their
    values NaN).

    :param log_q: ``k ↦ log q(k)`` elementwise over ``value``'s shape (called inside the
        support only).
    :param term: ``k ↦`` a pytree of arrays of ``value``'s shape.
    """
    value = lax.stop_gradient(value)
    log_q_value = log_q(value)
    zero = jax.tree.map(jnp.zeros_like, term(value))
    false = jnp.zeros(jnp.shape(log_q_value), bool)

    def side(k, inside, given_up):
        safe = jnp.where(inside, k, value)
        log_ratio = jnp.where(inside, log_q(safe) - log_q_value, -jnp.inf)
        given_up = given_up | (log_ratio > np.log(LARGEST_WEIGHT))
        weight = jnp.where(given_up, 0.0, jnp.exp(log_ratio))
        return weight, term(safe), given_up

    def body(carry):
        step, (head, tail), (head_done, tail_done), (head_out, tail_out), last = carry
        pending = ~(head_done | tail_done)
        k = value - step
        weight, terms, head_out = side(k, pending & (k >= 0), head_out)
        head = jax.tree.map(lambda acc, t: acc + weight * t, head, terms)
        head_done = head_done | (pending & (k <= 0) & ~head_out)
        k = value + 1 + step
        inside = pending if upper_bound is None else pending & (k <= upper_bound)
        weight, terms, tail_out = side(k, inside, tail_out)
        tail = jax.tree.map(lambda acc, t: acc - weight * t, tail, terms)
        ended = (weight < NEGLIGIBLE_WEIGHT) & (weight <= last) & (step > 0)
        if upper_bound is not None:
            ended = ended | (k >= upper_bound)
        tail_done = tail_done | (pending & ended & ~tail_out & ~head_done)
        last = jnp.where(pending, weight, last)
        return step + 1, (head, tail), (head_done, tail_done), (head_out, tail_out), last

    def more(carry):
        step, _, (head_done, tail_done), (head_out, tail_out), _ = carry
        stuck = ~(head_done | tail_done) & head_out & tail_out
        return (step < COUNT_SUM_CAP) & ~jnp.all(head_done | tail_done) & ~jnp.any(stuck)

    start = (jnp.zeros((), value.dtype), (zero, zero), (false, false), (false, false), 1.0 + false)
    _, (head, tail), (head_done, tail_done), _, _ = lax.while_loop(more, body, start)
    done = head_done | tail_done
    all_done = jnp.all(done)
    open_count = jnp.max(jnp.where(done, -1, value), initial=-1)
    if isinstance(all_done, jax.core.Tracer):
        jax.debug.callback(partial(_raise_if_open, _SITE.get()), all_done, open_count)
    else:
        _raise_if_open(_SITE.get(), all_done, open_count)
    return jax.tree.map(
        lambda h, t: jnp.where(head_done, h, jnp.where(tail_done, t, jnp.nan)), head, tail
    )
