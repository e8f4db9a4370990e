"""Noise, conditional reparameterisation and relaxations of REBAR and RELAX (the JAX twin
of :mod:`pyro_go.ops.relaxation`; both compute the same numbers from the same noise).

A Bernoulli or Categorical sample ``b`` is written as a hard threshold (``argmax``) of a
continuous ``z`` that is a differentiable function of the logits ``l`` and uniform
noise ``u`` (RELAX paper, eq. 3; the Gumbel-max trick, its appendix B).  REBAR's key
device is a second sample ``z̃ ~ p(z | b)``, also reparameterised (by noise ``v``), so
that ``E[c(z̃) ∂ log p(b)] = E[∂c(z) − ∂c(z̃)]`` for any differentiable ``c`` (the
identity behind eqs. 7–9; Tucker et al. 2017, sec. 3).  Everything here works in log
space so that nothing overflows at the boundaries of the unit interval.

All functions are pure and elementwise over leading (batch) dims; Categorical functions
act on the last dim (``K``) and take the sample ``b`` as an index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import random


def uniform_noise(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Uniform noise on ``[ε, 1 − ε]`` (``ε`` the dtype's machine epsilon), so that every
    logarithm below stays finite."""
    eps = jnp.finfo(dtype).eps
    return jnp.clip(random.uniform(key, shape, dtype), eps, 1 - eps)


def _logit(v: jax.Array) -> jax.Array:
    return jnp.log(v) - jnp.log1p(-v)


def logistic_z(logits: jax.Array, u: jax.Array) -> jax.Array:
    """``z = l + log u − log(1 − u)``: a logistic variable with ``H(z) ~ Bernoulli(σ(l))``
    (RELAX eq. 3)."""
    return logits + _logit(u)


def bernoulli_conditional_z(logits: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
    """``z̃ ~ p(z | b)`` for the logistic ``z`` of :func:`logistic_z` (REBAR's conditional
    sample).

    With ``θ = σ(l)``, ``u`` given ``b = 1`` is uniform on ``(1 − θ, 1)`` and given ``b = 0``
    on ``(0, 1 − θ)``; substituting ``u = 1 − θ + vθ`` (resp. ``u = v(1 − θ)``) into eq. 3
    gives ``z̃ = softplus(logit v + softplus l)`` (resp.
    ``z̃ = −softplus(−logit v + softplus(−l))``)."""
    logit_v = _logit(v)
    positive = jax.nn.softplus(logit_v + jax.nn.softplus(logits))
    negative = -jax.nn.softplus(-logit_v + jax.nn.softplus(-logits))
    return jnp.where(b > 0, positive, negative)


def gumbel_z(logits: jax.Array, u: jax.Array) -> jax.Array:
    """``z_k = log π_k − log(−log u_k)``: Gumbel-max noise with
    ``argmax z ~ Categorical(π)`` (RELAX appendix B)."""
    return jax.nn.log_softmax(logits, -1) - jnp.log(-jnp.log(u))


def categorical_conditional_z(logits: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
    """``z̃ ~ p(z | argmax z = b)`` for the Gumbel ``z`` of :func:`gumbel_z` (REBAR's
    conditional sample for categorical variables; Tucker et al. 2017, appendix C).

    The maximum of the Gumbels is a Gumbel located at ``log Σπ = 0``:
    ``z̃_b = −log e_b`` with ``e_b = −log v_b``; every other coordinate is a Gumbel with
    location ``log π_i`` truncated below ``z̃_b``:
    ``z̃_i = −log(e_i / π_i + e_b)``, computed as a ``logaddexp``."""
    log_pi = jax.nn.log_softmax(logits, -1)
    exp_noise = -jnp.log(v)
    index = jnp.asarray(b, jnp.int32)[..., None]
    exp_chosen = jnp.take_along_axis(exp_noise, index, -1)
    others = -jnp.logaddexp(jnp.log(exp_noise) - log_pi, jnp.log(exp_chosen))
    chosen = -jnp.log(exp_chosen)
    return jnp.where(jnp.arange(logits.shape[-1]) == index, chosen, others)


def relaxed_bernoulli(z: jax.Array, temperature: jax.Array) -> jax.Array:
    """``σ_λ(z) = σ(z / λ)``, REBAR's relaxation of ``H(z)`` (eq. 5)."""
    return jax.nn.sigmoid(z / temperature)


def relaxed_one_hot(z: jax.Array, temperature: jax.Array) -> jax.Array:
    """``softmax(z / λ)``, the Concrete relaxation of ``one_hot(argmax z)`` (eq. 11)."""
    return jax.nn.softmax(z / temperature, -1)


def bernoulli_score(logits: jax.Array, b: jax.Array) -> jax.Array:
    """``∂ log p(b) / ∂l = b − σ(l)``."""
    return b - jax.nn.sigmoid(logits)


def categorical_score(logits: jax.Array, index: jax.Array) -> jax.Array:
    """``∂ log p(b) / ∂l = one_hot(b) − softmax(l)``."""
    one_hot = jax.nn.one_hot(index, logits.shape[-1], dtype=logits.dtype)
    return one_hot - jax.nn.softmax(logits, -1)


__all__ = [
    "bernoulli_conditional_z",
    "bernoulli_score",
    "categorical_conditional_z",
    "categorical_score",
    "gumbel_z",
    "logistic_z",
    "relaxed_bernoulli",
    "relaxed_one_hot",
    "uniform_noise",
]
