"""SVI steps that stop at a non-finite loss and say where it came from.

Inside ``jax.jit`` nothing can raise on a value, and NumPyro's ``svi.update`` /
``svi.run`` turn a non-finite loss into ``nan`` parameters without a message
(``svi.stable_update`` skips such steps silently).  :func:`update_checked` and
:func:`run_checked` keep the jit-compiled step and check its loss and new parameters on
the host; on the first non-finite one they raise :class:`NonFiniteLossError`, which names
the non-finite parameters, observed sites and log-densities (:func:`non_finite_sites`)
and carries the last good ``svi_state`` to resume from::

    from numpyro_go.infer import run_checked

    result = run_checked(svi, jax.random.PRNGKey(0), 2000, data)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax, random
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.svi import SVI, SVIRunResult, SVIState

from numpyro_go.infer.non_finite import non_finite_observations
from numpyro_go.infer.trace_utils import log_prob, sample_sites


class NonFiniteLossError(ValueError):
    """A step of SVI gave a non-finite loss or parameter.

    :ivar state: the last ``svi_state`` whose loss and parameters were finite (the one
        the failing step started from); its ``rng_key`` gives the failing step's draw.
    :ivar step: the index of the failing step (0-based) in :func:`run_checked`, else
        ``None``.
    """

    def __init__(self, message: str, state: SVIState, step: int | None) -> None:
        super().__init__(message)
        self.state = state
        self.step = step


def _all_finite(loss, svi: SVI, state: SVIState) -> jax.Array:
    leaves = jax.tree.leaves(svi.optim.get_params(state.optim_state))
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in [loss, *leaves]]))


def non_finite_sites(svi: SVI, svi_state: SVIState, *args, **kwargs) -> list[str]:
    """What is non-finite at ``svi_state``'s parameters: the parameters themselves, and
    from one run of the guide and the model (seeded with the key of the step that
    ``svi.update(svi_state, ...)`` takes) the observed sites whose data and the sites
    whose log-density is not finite.  The ELBO's own draw at that step may differ."""
    params = svi.get_params(svi_state)
    bad = [
        f"parameter '{name}'"
        for name, value in params.items()
        if not all(jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(value))
    ]
    kwargs = dict(kwargs, **svi.static_kwargs)
    _, step_key = random.split(svi_state.rng_key)
    model_seed, guide_seed = random.split(step_key)
    guide_trace = trace(seed(substitute(svi.guide, data=params), guide_seed)).get_trace(
        *args, **kwargs
    )
    model = substitute(replay(seed(svi.model, model_seed), guide_trace), data=params)
    model_trace = trace(model).get_trace(*args, **kwargs)
    bad += [f"observed site {site}" for site in non_finite_observations(model_trace)]
    for side, trace_ in (("model", model_trace), ("guide", guide_trace)):
        for name, site in sample_sites(trace_).items():
            value = jnp.sum(log_prob(site))
            if not jnp.isfinite(value):
                bad.append(f"{side} site '{name}' (log-density {float(value)})")
    return bad


def _error(svi, state, step, args, kwargs) -> NonFiniteLossError:
    at = "" if step is None else f" at step {step}"
    sites = non_finite_sites(svi, state, *args, **kwargs)
    where = (
        "; non-finite: " + ", ".join(sites)
        if sites
        else "; a re-run at those parameters drew finite log-densities everywhere (the "
        "estimator's terms overflowed, or the step's own draw was extreme)"
    )
    return NonFiniteLossError(
        f"SVI{at}: the loss or the updated parameters are not finite{where}. The state "
        "before the step is kept (NonFiniteLossError.state); fix the data or the "
        "parameters named and resume from it.",
        state,
        step,
    )


def update_checked(svi: SVI, svi_state: SVIState, *args, update_fn=None, **kwargs):
    """``svi.update(svi_state, *args, **kwargs)``, raising :class:`NonFiniteLossError`
    (with ``svi_state`` itself as the state to resume from) if the loss or a new
    parameter is not finite.

    :param update_fn: the update to run, e.g. ``jax.jit(svi.update)`` compiled once
        by the caller; default ``svi.update``.
    :returns: ``(svi_state, loss)``.
    """
    update_fn = svi.update if update_fn is None else update_fn
    new_state, loss = update_fn(svi_state, *args, **kwargs)
    if not _all_finite(loss, svi, new_state):
        raise _error(svi, svi_state, None, args, kwargs)
    return new_state, loss


def run_checked(
    svi: SVI,
    rng_key,
    num_steps: int,
    *args,
    init_state: SVIState | None = None,
    init_params: dict | None = None,
    **kwargs,
) -> SVIRunResult:
    """``svi.run(rng_key, num_steps, *args, progress_bar=False, ...)``, one
    ``jax.lax.scan`` compiled once, that stops stepping at the first non-finite loss or
    parameter and then raises :class:`NonFiniteLossError` naming the step, the
    non-finite sites and carrying the state before it.

    :returns: an :class:`~numpyro.infer.svi.SVIRunResult` when every step was finite.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be a positive integer.")
    if init_state is None:
        state = svi.init(rng_key, *args, init_params=init_params, **kwargs)
    else:
        state = init_state

    def step(state):
        new_state, loss = svi.update(state, *args, **kwargs)
        finite = _all_finite(loss, svi, new_state)
        return lax.cond(finite, lambda: new_state, lambda: state), loss, finite

    def skip(state):
        return state, jnp.asarray(jnp.nan, jnp.result_type(float)), jnp.asarray(True)

    def body(carry, index):
        state, failed_at = carry
        state, loss, finite = lax.cond(failed_at < 0, step, skip, state)
        failed_at = jnp.where((failed_at < 0) & ~finite, index, failed_at)
        return (state, failed_at), loss

    @jax.jit
    def run(state):
        return lax.scan(body, (state, jnp.asarray(-1)), jnp.arange(num_steps))

    (state, failed_at), losses = run(state)
    if int(failed_at) >= 0:
        raise _error(svi, state, int(failed_at), args, kwargs)
    return SVIRunResult(svi.get_params(state), state, losses)
