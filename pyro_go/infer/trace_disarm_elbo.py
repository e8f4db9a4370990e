"""``TraceDisARM_ELBO``: the ELBO with the DisARM gradient estimator for Bernoulli sites."""

from __future__ import annotations

import torch

from pyro_go.infer.relax_site import site_logits
from pyro_go.infer.score_particles import MultiSampleScoreELBO, Run, ScoreSite
from pyro_go.ops.provenance import provenance_of
from pyro_go.poutine.score_sample_messenger import ScoreSampleMessenger


class TraceDisARM_ELBO(MultiSampleScoreELBO):
    r"""
    An ELBO whose gradient estimator for Bernoulli guide sites is DisARM [1] (ARM [2]
    with the uniform noise integrated out): two antithetic samples from one uniform
    ``u``, ``b = 1[u < σ(θ)]`` and ``b̃ = 1[1 − u < σ(θ)]``, and on each logit

    .. math:: \hat g_θ = \tfrac12\,(f(b) − f(\tilde b))\,(−1)^{\tilde b}\,
              1[b ≠ \tilde b]\,σ(|θ|),

    back-propagated into the guide's parameters through ``θ``.  ``f`` is the site's cost
    per independent plate slice: the model and guide terms that depend on the site (by
    provenance, as in :class:`~pyro.infer.TraceGraph_ELBO`), its own ``log q`` included
    with ``θ`` held fixed (the dropped term has zero mean).  Everything else — the ELBO's
    value, model parameters, reparameterised continuous guide sites (pathwise, with
    "sticking the landing" [3] by default) — is averaged over the two samples.  A
    drop-in replacement for :class:`~pyro.infer.Trace_ELBO` in :class:`~pyro.infer.SVI`,
    at two model evaluations per step.

    Every non-reparameterised guide site must be a Bernoulli (any wrapper:
    ``Independent``, ``expand``, masks) whose logits do not depend on other sampled
    guide values (both samples of a pair need the same ``θ``); anything else raises a
    :class:`ValueError` naming the site.  :class:`~pyro_go.TraceGO_ELBO` and
    :class:`~pyro_go.TraceRLOO_ELBO` cover such guides.

    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param bool vectorize_particles: evaluate the pair in one vectorised pass (an outer
        plate of size 2; the model and guide must broadcast over it).  ``False`` runs
        the guide and model twice.
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
        self,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        *,
        stick_the_landing: bool = True,
    ) -> None:
        super().__init__(
            num_particles=2,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            stick_the_landing=stick_the_landing,
        )

    def _sampler(self, partner: dict | None) -> ScoreSampleMessenger:
        return ScoreSampleMessenger(
            self.name, antithetic=True, pair_dim=self._particle_dim(), partner=partner
        )

    def _gradient_terms(self, runs: list[Run], sites: list[ScoreSite]) -> torch.Tensor:
        total = 0.0
        for site in sites:
            logits = self._pair_logits(runs, site)
            b, b_tilde = site.value[0], site.value[1]
            cost = site.per_element(site.cost)
            weight = 0.5 * (cost[0] - cost[1]) * (1 - 2 * b_tilde)
            weight = weight * (b != b_tilde) * torch.sigmoid(logits.detach().abs())
            total = total + (weight.detach() * logits).sum()
        return total

    def _pair_logits(self, runs: list[Run], site: ScoreSite) -> torch.Tensor:
        """``θ`` of the pair (the first sample's), checked to be the same for both."""
        nodes = [run.traces.guide_trace.nodes[site.name] for run in runs]
        parents = provenance_of(nodes[0]["log_prob"]) - {site.name}
        if parents:
            raise ValueError(
                f"{self.name}: the logits of guide site '{site.name}' depend on the "
                f"discrete guide site(s) {sorted(parents)}; DisARM needs both samples of a "
                "pair to share the logits. Use pyro_go.TraceGO_ELBO or "
                "pyro_go.TraceRLOO_ELBO for this guide."
            )
        logits = [site_logits(node["fn"], "bernoulli") for node in nodes]
        if self.vectorize_particles:
            logits = list(logits[0].movedim(self._particle_dim() - site.event_dim, 0))
        if not torch.equal(logits[0].detach(), logits[1].detach()):
            raise ValueError(
                f"{self.name}: the logits of guide site '{site.name}' differ between the "
                "two samples of the antithetic pair: they depend on another sampled guide "
                "value (e.g. a continuous site). DisARM needs both samples to share the "
                "logits; use pyro_go.TraceGO_ELBO or pyro_go.TraceRLOO_ELBO for this guide."
            )
        return logits[0]
