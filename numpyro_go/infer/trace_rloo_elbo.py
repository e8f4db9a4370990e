"""``TraceRLOO_ELBO`` for NumPyro: the ELBO with the REINFORCE leave-one-out gradient
estimator, ``jit``-able end to end (the twin of :class:`pyro_go.infer.TraceRLOO_ELBO`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient

from numpyro_go.infer.score_particles import MultiSampleScoreELBO, score_sample, shared_plates


class TraceRLOO_ELBO(MultiSampleScoreELBO):
    r"""
    An ELBO whose gradient estimator for discrete and other non-reparameterised guide
    sites is REINFORCE leave-one-out (RLOO) [1, 2]: ``K ≥ 2`` independent samples, each
    score term weighted by its cost minus the mean cost of the other ``K − 1``,

    .. math:: \hat g = \frac1K \sum_k \Big(f_k − \frac1{K−1}\sum_{j≠k} f_j\Big)
              ∇ \log q(z_k),

    unbiased because the baseline of sample ``k`` is independent of it.  The cost ``f``
    of a site is Rao-Blackwellised like :class:`~numpyro.infer.TraceGraph_ELBO`'s: only
    the model and guide terms that depend on the site (by provenance), summed per
    independent slice of the site's plates, and the baseline is taken per slice; the
    ``K`` samples share the plate subsamples.  Reparameterised continuous guide sites get
    the pathwise gradient, with guide parameters held fixed inside ``log q`` [3] by
    default.  A drop-in ``loss=`` for :class:`numpyro.infer.SVI`, ``jax.jit``-compiled
    end to end.

    :param int num_particles: ``K``, the number of samples (at least 2).
    :param vectorize_particles: ``jax.vmap`` over the samples (``True``), ``jax.lax.map``
        (``False``), or a callable such as ``jax.pmap``.
    :param bool stick_the_landing: hold guide parameters fixed inside ``log q`` of
        continuous sites [3] (default ``True``).

    **References**

    [1] Wouter Kool, Herke van Hoof, Max Welling (2019). *Buy 4 REINFORCE Samples, Get a
        Baseline for Free!* ICLR 2019 Deep RL Meets Structured Prediction workshop.

    [2] Andriy Mnih, Danilo J. Rezende (2016). *Variational Inference for Monte Carlo
        Objectives.* ICML (the leave-one-out baseline of VIMCO).

    [3] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017). *Sticking the Landing:
        Simple, Lower-Variance Gradient Estimators for Variational Inference.* NeurIPS.
    """

    name = "TraceRLOO_ELBO"

    def __init__(
        self,
        num_particles: int = 2,
        vectorize_particles: bool | Callable = True,
        *,
        stick_the_landing: bool = True,
    ) -> None:
        if not (isinstance(num_particles, int) and num_particles >= 2):
            raise ValueError(
                f"TraceRLOO_ELBO needs num_particles >= 2 (the leave-one-out baseline of a "
                f"sample is the mean of the others), got {num_particles!r}"
            )
        super().__init__(num_particles, vectorize_particles, stick_the_landing)

    def _runs(self, rng_key, param_map, model, guide, args, kwargs) -> dict:
        plate_key, run_key = random.split(rng_key)
        plates = shared_plates(plate_key, param_map, guide, args, kwargs)

        def run(key):
            sampler = score_sample(elbo=self.name)
            return self._run(key, param_map, model, guide, args, kwargs, sampler, plates)

        return self.vectorize_particles_fn(run, random.split(run_key, self.num_particles))

    def _gradient_terms(self, sites: dict) -> jax.Array:
        total = jnp.zeros(())
        for site in sites.values():
            weight = leave_one_out(site["cost"])
            total = total + jnp.sum(site["log_q"] * stop_gradient(weight)) / self.num_particles
        return total


def leave_one_out(cost: jax.Array) -> jax.Array:
    """``f_k − mean_{j≠k} f_j`` along axis 0 (``K ≥ 2`` samples)."""
    num = cost.shape[0]
    return cost - (jnp.sum(cost, 0, keepdims=True) - cost) / (num - 1)
