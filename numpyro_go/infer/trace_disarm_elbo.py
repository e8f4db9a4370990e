"""``TraceDisARM_ELBO`` for NumPyro: the ELBO with the DisARM gradient estimator for
Bernoulli sites, ``jit``-able end to end (the twin of
:class:`pyro_go.infer.TraceDisARM_ELBO`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient

from numpyro_go.infer.score_particles import MultiSampleScoreELBO, score_sample


class TraceDisARM_ELBO(MultiSampleScoreELBO):
    r"""
    An ELBO whose gradient estimator for Bernoulli guide sites is DisARM [1] (ARM [2]
    with the uniform noise integrated out): two antithetic samples from one uniform
    ``u``, ``b = 1[u < σ(θ)]`` and ``b̃ = 1[1 − u < σ(θ)]``, and on each logit

    .. math:: \hat g_θ = \tfrac12\,(f(b) − f(\tilde b))\,(−1)^{\tilde b}\,
              1[b ≠ \tilde b]\,σ(|θ|),

    back-propagated into the guide's parameters through ``θ``.  ``f`` is the site's cost
    per independent plate slice: the model and guide terms that depend on the site (by
    provenance, as in :class:`~numpyro.infer.TraceGraph_ELBO`), its own ``log q``
    included with ``θ`` held fixed (the dropped term has zero mean).  Everything else —
    the ELBO's value, model parameters, reparameterised continuous guide sites
    (pathwise, "sticking the landing" [3] by default) — is averaged over the two runs.
    A drop-in ``loss=`` for :class:`numpyro.infer.SVI`, ``jax.jit``-compiled end to end,
    at two model evaluations per step.

    The two runs of a pair share every other random draw (the same seeds: plate
    subsamples, continuous guide sites, model-only latent sites), so a Bernoulli site's
    logits may depend on continuous guide sites.  Every non-reparameterised guide site
    must be a Bernoulli whose logits do not depend on another discrete guide site;
    anything else raises a :class:`ValueError` naming the site
    (:class:`~numpyro_go.TraceGO_ELBO` and :class:`~numpyro_go.TraceRLOO_ELBO` cover
    such guides).

    :param vectorize_particles: ``jax.vmap`` over the pair (``True``), ``jax.lax.map``
        (``False``), or a callable.
    :param bool stick_the_landing: hold guide parameters fixed inside ``log q`` of
        continuous sites [3] (default ``True``).

    **References**

    [1] Zhe Dong, Andriy Mnih, George Tucker (2020). *DisARM: An Antithetic Gradient
        Estimator for Binary Latent Variables.* NeurIPS 2020.

    [2] Mingzhang Yin, Mingyuan Zhou (2019). *ARM: Augment-REINFORCE-Merge Gradient for
        Stochastic Binary Networks.* ICLR 2019.

    [3] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017). *Sticking the Landing:
        Simple, Lower-Variance Gradient Estimators for Variational Inference.* NeurIPS.
    """

    name = "TraceDisARM_ELBO"

    def __init__(
        self, vectorize_particles: bool | Callable = True, *, stick_the_landing: bool = True
    ) -> None:
        super().__init__(2, vectorize_particles, stick_the_landing)

    def _runs(self, rng_key, param_map, model, guide, args, kwargs) -> dict:
        run_key, noise_key = random.split(rng_key)

        def run(flip):
            sampler = score_sample(elbo=self.name, noise_key=noise_key, flip=flip)
            return self._run(run_key, param_map, model, guide, args, kwargs, sampler)

        return self.vectorize_particles_fn(run, jnp.array([False, True]))

    def _check_sites(self, guide_trace: dict, scored: list[str], guide_deps: dict) -> None:
        for name in scored:
            parents = sorted(guide_deps[name] - {name})
            if parents:
                raise ValueError(
                    f"{self.name}: the logits of guide site '{name}' depend on the discrete "
                    f"guide site(s) {parents}; DisARM needs both samples of a pair to share "
                    "the logits. Use numpyro_go.TraceGO_ELBO or numpyro_go.TraceRLOO_ELBO "
                    "for this guide."
                )

    def _gradient_terms(self, sites: dict) -> jax.Array:
        total = jnp.zeros(())
        for site in sites.values():
            logits, value, cost = site["logits"], site["value"], site["cost"]
            b, b_tilde = value[0], value[1]
            event = jnp.ndim(b) - jnp.ndim(cost[0])
            difference = jnp.reshape(cost[0] - cost[1], jnp.shape(cost[0]) + (1,) * event)
            weight = 0.5 * difference * (1 - 2 * b_tilde) * (b != b_tilde)
            weight = weight * jax.nn.sigmoid(jnp.abs(logits[0]))
            total = total + jnp.sum(stop_gradient(weight) * logits[0])
        return total
