"""``TraceRLOO_ELBO``: the ELBO with the REINFORCE leave-one-out gradient estimator."""

from __future__ import annotations

import torch

from pyro_go.infer.score_particles import MultiSampleScoreELBO, Run, ScoreSite
from pyro_go.poutine.score_sample_messenger import ScoreSampleMessenger


class TraceRLOO_ELBO(MultiSampleScoreELBO):
    r"""
    An ELBO whose gradient estimator for discrete and other non-reparameterised guide
    sites is REINFORCE leave-one-out (RLOO) [1, 2]: ``K ≥ 2`` independent samples, each
    score term weighted by its cost minus the mean cost of the other ``K − 1``,

    .. math:: \hat g = \frac1K \sum_k \Big(f_k − \frac1{K−1}\sum_{j≠k} f_j\Big)
              ∇ \log q(z_k),

    which is unbiased because the baseline of sample ``k`` is independent of it.  The
    cost ``f`` of a site is Rao-Blackwellised like :class:`~pyro.infer.TraceGraph_ELBO`'s:
    only the model and guide terms that depend on the site (by provenance), summed per
    independent slice of the site's plates, and the baseline is taken per slice.
    Reparameterised continuous guide sites get the pathwise gradient, with guide
    parameters held fixed inside ``log q`` [3] by default.  A drop-in replacement for
    :class:`~pyro.infer.Trace_ELBO` in :class:`~pyro.infer.SVI`, and a strong peer of
    :class:`~pyro_go.TraceGO_ELBO` at ``K`` model evaluations per step.

    The ``K`` samples share the plate subsamples (sequential runs replay the first run's;
    vectorised runs draw them once), so that each slice's baseline compares the same
    data.

    :param int num_particles: ``K``, the number of samples (at least 2).
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param bool vectorize_particles: run the ``K`` samples in one vectorised pass (an
        outer plate of size ``K``; the model and guide must broadcast over it).
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
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        *,
        stick_the_landing: bool = True,
    ) -> None:
        if not (isinstance(num_particles, int) and num_particles >= 2):
            raise ValueError(
                f"TraceRLOO_ELBO needs num_particles >= 2 (the leave-one-out baseline of a "
                f"sample is the mean of the others), got {num_particles!r}"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            stick_the_landing=stick_the_landing,
        )

    def _sampler(self, partner: dict | None) -> ScoreSampleMessenger:
        return ScoreSampleMessenger(self.name)

    def _gradient_terms(self, runs: list[Run], sites: list[ScoreSite]) -> torch.Tensor:
        total = 0.0
        for site in sites:
            weight = leave_one_out(site.cost)
            total = total + (site.log_q * weight.detach()).sum() / self.num_particles
        return total


def leave_one_out(cost: torch.Tensor) -> torch.Tensor:
    """``f_k − mean_{j≠k} f_j`` along dim 0 (``K ≥ 2`` samples)."""
    num = cost.shape[0]
    return cost - (cost.sum(0, keepdim=True) - cost) / (num - 1)
