"""GO gradients outside an ELBO: ``go_surrogate(fn, f, ...)`` (the JAX twin of
:func:`pyro_go.go_surrogate`).

For an objective ``E_{y ~ fn}[f(y)]`` whose ``y`` may be discrete (a generator with
discrete outputs, a policy over actions), :func:`go_surrogate` returns a scalar whose
value is ``f(y)`` for one sample ``y`` and whose gradient is the GO estimate of
``∇ E[f(y)]`` (Theorem 1 of Cong et al. 2019), plus the ordinary gradient of ``f``'s own
parameters at ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.lax import stop_gradient

from numpyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from numpyro_go.ops.special import naming_count_site


def go_surrogate(
    fn,
    f: Callable[[jax.Array], jax.Array],
    rng_key: jax.Array | None = None,
    value: jax.Array | None = None,
    *,
    categorical_form: CategoricalForm = "local",
    chunk_size: int | None = None,
) -> jax.Array:
    """A one-sample GO surrogate objective for ``E_{y ~ fn}[f(y)]``; ``jit``-able.

    :param fn: the distribution (any wrapper of a supported family).  All its elements
        are treated as coupled: ``f`` is evaluated once per element and alternative,
        by ``jax.vmap``.
    :param f: maps one value (``fn``'s batch + event shape) to a scalar.
    :param rng_key: key to draw the sample with (unless ``value`` is given).
    :param value: a sample of ``fn`` to use; continuous families with a pathwise sampler
        must leave it ``None`` (their sample carries its own gradient).
    :param categorical_form: ``"local"`` or ``"raw"`` for Categorical families.
    :param chunk_size: at most this many perturbed values per batch of ``f`` calls.
    :returns: a scalar with value ``f(y)`` and gradient the GO estimate.
    """
    rule = get_go_rule(fn, categorical_form)
    if rule is None:
        raise ValueError(
            f"go_surrogate: {type(unwrap_distribution(fn)).__name__} has no GO rule; "
            "register one with numpyro_go.register_go_rule."
        )
    if value is None:
        if rng_key is None:
            raise ValueError("go_surrogate: pass rng_key (to draw the sample) or value.")
        value = fn.sample(rng_key)  # pathwise for the "reparameterized" rule
    elif rule.kind == "reparameterized":
        raise ValueError(
            "go_surrogate: this distribution has a pathwise sampler; pass rng_key and leave "
            "value=None so that the sample carries its gradient."
        )
    if rule.kind == "reparameterized":
        return f(value)
    value = stop_gradient(value)
    if rule.kind == "cdf":
        base = unwrap_distribution(fn)
        reason = rule.why_not_differentiable(base, value)
        if reason is not None:
            raise ValueError(f"go_surrogate: {type(base).__name__} has no GO gradient ({reason}).")
        return f(rule.surrogate_sample(base, value))

    # discrete: local import keeps the infer package out of distributions' import graph
    from numpyro_go.infer.perturbation import LeafLayout

    layout = LeafLayout("value", rule, fn, value, None, frozenset())
    alternatives = rule.alternatives(layout.base_fn, value)
    alternatives = jnp.broadcast_to(alternatives, alternatives.shape[:1] + value.shape)
    entries = jnp.arange(1 + layout.num_entries)

    def f_at(entry):
        return f(layout.perturbed(alternatives, entry))

    if chunk_size is None:
        f_stack = jax.vmap(f_at)(entries)
    else:
        f_stack = jax.lax.map(f_at, entries, batch_size=chunk_size)
    f_stack = stop_gradient(f_stack).reshape((-1,) + (1,) * value.ndim)
    with naming_count_site("go_surrogate"):
        term = rule.surrogate(layout.base_fn, value, layout.delta(f_stack))
    return f(value) + term - stop_gradient(term)
