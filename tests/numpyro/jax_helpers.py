"""Gradient sampling and exact gradients for the NumPyro backend's tests."""

import jax
import jax.numpy as jnp
import numpy as np


def flat_gradient(grads: dict, names: list[str]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(grads[name]) for name in names])


def gradient_samples(elbo, model, guide, params: dict, num_samples: int, *args, seed=0):
    """``num_samples`` independent estimates of ``∇ loss`` w.r.t. ``params`` (a dict of
    constrained values, as ``SVI`` passes them), ``[num_samples, total_size]``, jitted
    and vmapped over keys."""
    names = sorted(params)

    def one(key):
        grads = jax.grad(lambda p: elbo.loss(key, p, model, guide, *args))(params)
        return flat_gradient(grads, names)

    keys = jax.random.split(jax.random.PRNGKey(seed), num_samples)
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def exact_gradient(neg_elbo, params: dict) -> np.ndarray:
    """``∇ neg_elbo(params)`` in float64, flattened in sorted name order."""
    with jax.enable_x64(True):
        params64 = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}
        grads = jax.grad(neg_elbo)(params64)
        return np.asarray(flat_gradient(grads, sorted(params)))
