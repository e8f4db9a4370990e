"""The machinery shared by the multi-sample score-function ELBOs of NumPyro
(:class:`~numpyro_go.infer.TraceRLOO_ELBO`, :class:`~numpyro_go.infer.TraceDisARM_ELBO`;
the twin of :mod:`pyro_go.infer.score_particles`): runs of guide and model, and for
each non-reparameterised guide site its values, its ``log q``, its logits and its
Rao-Blackwellised cost per independent plate slice, stacked over the runs by
``jax.vmap`` (or ``jax.lax.map``)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.elbo import ELBO, MultiFrameTensor, get_nonreparam_deps
from numpyro.primitives import Messenger

from numpyro_go.distributions.registry import unwrap_distribution
from numpyro_go.handlers import refuse_enumeration
from numpyro_go.infer.trace_relax_elbo import relax_kind
from numpyro_go.infer.trace_utils import latent_sites, log_prob, replayed_model_trace, sample_sites
from numpyro_go.ops.relaxation import uniform_noise


class score_sample(Messenger):
    """Samples the guide's non-reparameterised latent sites with their gradient stopped.

    With ``noise_key`` (DisARM) every such site must be a Bernoulli (a
    :class:`ValueError` naming the site otherwise) and is sampled as
    ``b = 1[u < σ(θ)]``, with ``u`` drawn from ``noise_key`` (the same in both runs of
    a pair) and replaced by ``1 − u`` where ``flip`` is true.  Enter it *outside*
    :class:`numpyro.handlers.trace` (NumPyro runs ``postprocess_message`` from the
    outermost handler inward).
    """

    def __init__(self, fn=None, elbo: str = "", noise_key=None, flip=None) -> None:
        self.elbo = elbo
        self.noise_key = noise_key
        self.flip = flip
        self._count = 0
        super().__init__(fn)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name, fn = msg["name"], msg["fn"]
        refuse_enumeration(msg, self.elbo)
        if fn.has_rsample:
            return
        if self.noise_key is None:
            msg["value"] = stop_gradient(msg["value"])
            return
        if relax_kind(fn) != "bernoulli":
            raise ValueError(
                f"{self.elbo}: guide site '{name}' has distribution "
                f"{type(unwrap_distribution(fn)).__name__}; DisARM covers Bernoulli sites "
                "(and reparameterised continuous sites). Use numpyro_go.TraceGO_ELBO or "
                "numpyro_go.TraceRLOO_ELBO for this guide."
            )
        probs = stop_gradient(jnp.broadcast_to(unwrap_distribution(fn).probs, fn.shape()))
        u = uniform_noise(random.fold_in(self.noise_key, self._count), probs.shape, probs.dtype)
        self._count += 1
        u = jnp.where(self.flip, 1 - u, u)
        msg["value"] = (u < probs).astype(jnp.result_type(msg["value"]))


def site_cost(name: str, guide_trace: dict, model_trace: dict, model_deps, guide_deps):
    """``f`` of guide site ``name``: the model terms that depend on it minus the guide
    terms that do (its own ``log q`` included), summed to its plates and broadcast to its
    batch shape (no gradient)."""
    cost = MultiFrameTensor()
    for other, site in sample_sites(model_trace).items():
        if name in model_deps[other]:
            cost.add((site["cond_indep_stack"], log_prob(site)))
    for other, site in latent_sites(guide_trace).items():
        if name in guide_deps[other]:
            cost.add((site["cond_indep_stack"], -log_prob(site)))
    guide_site = guide_trace[name]
    summed = cost.sum_to(guide_site["cond_indep_stack"])
    batch_shape = tuple(guide_site["fn"].batch_shape)
    while jnp.ndim(summed) > len(batch_shape):
        summed = jnp.sum(summed, 0)
    summed = jnp.reshape(summed, (1,) * (len(batch_shape) - jnp.ndim(summed)) + jnp.shape(summed))
    return stop_gradient(jnp.broadcast_to(summed, batch_shape))


class MultiSampleScoreELBO(ELBO):
    """Runs of guide and model (``jax.vmap`` or ``jax.lax.map`` over them), one
    score-function gradient built from all of them; continuous guide sites with a
    pathwise sampler keep their pathwise gradient, with "sticking the landing" by
    default."""

    #: the estimator's name in messages
    name = "MultiSampleScoreELBO"
    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int,
        vectorize_particles: bool | Callable = True,
        stick_the_landing: bool = True,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.stick_the_landing = stick_the_landing

    def _run(self, key, param_map, model, guide, args, kwargs, sampler, plates=None) -> dict:
        """One run: the surrogate ELBO of its pathwise parts, and for each
        non-reparameterised guide site its value, ``log q``, logits (Bernoulli sites)
        and cost."""
        model_seed, guide_seed = random.split(key)
        data = dict(param_map, **(plates or {}))
        with sampler:
            guide_trace = trace(seed(substitute(guide, data=data), guide_seed)).get_trace(
                *args, **kwargs
            )
        model_trace = replayed_model_trace(model, model_seed, guide_trace, param_map, args, kwargs)
        scored = [name for name, site in latent_sites(guide_trace).items()
                  if not site["fn"].has_rsample]  # fmt: skip
        elbo = jnp.zeros(())
        for site in sample_sites(model_trace).values():
            elbo = elbo + jnp.sum(log_prob(site))
        for name, site in latent_sites(guide_trace).items():
            log_q = jnp.sum(log_prob(site))
            if name in scored:
                log_q = stop_gradient(log_q)
            elif self.stick_the_landing:
                log_q_params = jnp.sum(log_prob(site, stop_gradient(site["value"])))
                log_q = log_q - log_q_params + stop_gradient(log_q_params)
            elbo = elbo - log_q
        sites = {}
        if scored:
            latents = {name: site["value"] for name, site in latent_sites(guide_trace).items()}
            model_deps, guide_deps = get_nonreparam_deps(
                model, guide, args, kwargs, param_map, latents=latents
            )
            self._check_sites(guide_trace, scored, guide_deps)
            for name in scored:
                site = guide_trace[name]
                entry = {
                    "value": stop_gradient(site["value"]),
                    # not scaled: the cost carries the scale (as in Pyro's ScoreParts)
                    "log_q": site["fn"].log_prob(site["value"]),
                    "cost": site_cost(name, guide_trace, model_trace, model_deps, guide_deps),
                }
                if relax_kind(site["fn"]) == "bernoulli":
                    logits = unwrap_distribution(site["fn"]).logits
                    entry["logits"] = jnp.broadcast_to(logits, site["fn"].shape())
                sites[name] = entry
        return {"elbo": elbo, "sites": sites}

    def _check_sites(self, guide_trace: dict, scored: list[str], guide_deps: dict) -> None:
        """Raise for guide structures the estimator does not cover (none by default)."""

    def loss_with_mutable_state(
        self, rng_key, param_map: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict:
        """
        :returns: ``{"loss": surrogate, "mutable_state": None}``: the surrogate's value is
            the negative ELBO estimate (averaged over the runs) and its gradient the
            estimator's.
        """
        runs = self._runs(rng_key, param_map, model, guide, args, kwargs)
        elbo = jnp.mean(runs["elbo"])
        if runs["sites"]:
            gradient_only = self._gradient_terms(runs["sites"])
            elbo = elbo + gradient_only - stop_gradient(gradient_only)
        return {"loss": -elbo, "mutable_state": None}

    def _runs(self, rng_key, param_map, model, guide, args, kwargs) -> dict:
        """The runs' outputs of :meth:`_run`, stacked on axis 0."""
        raise NotImplementedError

    def _gradient_terms(self, sites: dict) -> jax.Array:
        """A term whose gradient is the estimator's gradient of ``E[f]`` through the
        non-reparameterised sites (its value is discarded)."""
        raise NotImplementedError


def shared_plates(rng_key, param_map, guide, args, kwargs) -> dict:
    """The guide's plate subsamples for ``rng_key``, to substitute in every run so that
    plate slices line up across runs (under ``jit`` the rest of this guide run is dead
    code and compiled away)."""
    guide_trace = trace(seed(substitute(guide, data=param_map), rng_key)).get_trace(*args, **kwargs)
    return {name: site["value"] for name, site in guide_trace.items() if site["type"] == "plate"}
