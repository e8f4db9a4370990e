"""The machinery shared by the multi-sample score-function ELBOs
(:class:`~pyro_go.infer.TraceRLOO_ELBO`, :class:`~pyro_go.infer.TraceDisARM_ELBO`): ``K``
runs of guide and model, and for each non-reparameterised guide site its values, its
``log q`` and its Rao-Blackwellised cost per independent plate slice, stacked over the
runs."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.infer.util import MultiFrameTensor, torch_item
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from pyro_go.infer.trace_utils import (
    TrackedTraces,
    guide_log_density,
    latent_sites,
    plain,
    sample_sites,
    trace_with_provenance,
)
from pyro_go.ops.provenance import provenance_of, strip
from pyro_go.poutine.score_sample_messenger import ScoreSampleMessenger


@dataclass
class Run:
    """One run of the guide and the model against it."""

    traces: TrackedTraces
    noise: dict[str, torch.Tensor]


@dataclass
class ScoreSite:
    """A non-reparameterised guide site over the ``K`` runs, runs on dim 0.

    :param name: the site's name.
    :param fn: its distribution in the first run (for the batch/event layout).
    :param value: ``[K, *batch, *event]`` sampled values (no gradient).
    :param log_q: ``[K, *batch]`` ``log q`` of the values, differentiable in the guide's
        parameters, *not* scaled (the cost carries the site's scale, as in Pyro's
        ``ScoreParts``: scaling both would count a subsample's scale twice).
    :param cost: ``[K, *batch]`` ``f``: the model terms that depend on the site minus the
        guide terms that do (its own ``log q`` included), summed to the site's plates
        and broadcast over them (no gradient): terms that no plate slice of the site
        reaches are left out, which keeps the estimator unbiased (TraceGraph_ELBO's
        Rao-Blackwellisation).
    """

    name: str
    fn: object
    value: torch.Tensor
    log_q: torch.Tensor
    cost: torch.Tensor

    @property
    def event_dim(self) -> int:
        return self.fn.event_dim

    def per_element(self, tensor: torch.Tensor) -> torch.Tensor:
        """A ``[K, *batch]`` tensor with the site's event dims appended (size 1)."""
        return tensor.reshape(tensor.shape + (1,) * self.event_dim)


def site_cost(name: str, traces: TrackedTraces) -> torch.Tensor:
    """``f`` of guide site ``name`` summed to its plates, shaped like its batch."""
    cost = MultiFrameTensor()
    for site in sample_sites(traces.model_trace).values():
        if name in provenance_of(site["log_prob"]):
            cost.add((site["cond_indep_stack"], plain(site["log_prob"])))
    for other, site in latent_sites(traces.guide_trace).items():
        if other == name or name in provenance_of(site["log_prob"]):
            cost.add((site["cond_indep_stack"], -plain(site["log_prob"])))
    guide_site = traces.guide_trace.nodes[name]
    summed = cost.sum_to(guide_site["cond_indep_stack"])
    rank = len(guide_site["fn"].batch_shape)
    while summed.dim() > rank:
        summed = summed.sum(0)
    summed = summed.reshape((1,) * (rank - summed.dim()) + summed.shape)
    return summed.expand(guide_site["fn"].batch_shape)


def subsample_trace(trace: Trace) -> Trace:
    """The plate subsample sites of ``trace``, to replay so that every run sees the same
    plate slices."""
    shared = Trace()
    for name, node in trace.nodes.items():
        if node["type"] == "sample" and isinstance(node["fn"], _Subsample):
            shared.add_node(name, **node)
    return shared


class MultiSampleScoreELBO(ELBO):
    """``K = num_particles`` runs of guide and model, one score-function gradient built
    from all of them (:meth:`_gradient_terms`); continuous guide sites with ``rsample``
    keep their pathwise gradient, with "sticking the landing" by default.

    Runs are sequential (each replays the plate subsamples of the first, so that plate
    slices line up across runs) or, with ``vectorize_particles=True``, one run in an
    outer plate of size ``K``, which needs a model and guide that broadcast over it.
    """

    #: the estimator's name in messages
    name = "MultiSampleScoreELBO"

    def __init__(
        self,
        num_particles: int,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        stick_the_landing: bool = True,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
        )
        self.stick_the_landing = stick_the_landing

    # ------------------------------------------------------------------ runs

    @abstractmethod
    def _sampler(self, partner: dict | None) -> ScoreSampleMessenger:
        """The sampling messenger of one run (``partner``: the first run's noise)."""

    def _get_trace(self, model: Callable, guide: Callable, args, kwargs, partner=None) -> Run:
        sampler = self._sampler(partner)
        traces = trace_with_provenance(
            sampler(guide), model, args, kwargs, self.max_plate_nesting, elbo=type(self).__name__
        )
        return Run(traces, sampler.noise)

    def _get_traces(self, model, guide, args, kwargs):
        if self.vectorize_particles:
            yield from super()._get_traces(model, guide, args, kwargs)
            return
        first = self._get_trace(model, guide, args, kwargs)
        yield first
        shared_guide = poutine.replay(guide, trace=subsample_trace(first.traces.raw_guide_trace))
        for _ in range(self.num_particles - 1):
            yield self._get_trace(model, shared_guide, args, kwargs, partner=first.noise)

    def _particle_dim(self) -> int | None:
        """The batch dim of the vectorised runs (``None`` when runs are sequential)."""
        return -self.max_plate_nesting if self.vectorize_particles else None

    def _score_sites(self, runs: list[Run]) -> list[ScoreSite]:
        names = list(runs[0].traces.tracked)
        for run in runs[1:]:
            if list(run.traces.tracked) != names:
                raise ValueError(
                    f"{self.name}: the runs sampled different non-reparameterised guide "
                    f"sites ({names} and {list(run.traces.tracked)}); the estimator needs "
                    "the same sites in every run."
                )
        dim = self._particle_dim()
        sites = []
        for name in names:
            nodes = [run.traces.guide_trace.nodes[name] for run in runs]
            fn = nodes[0]["fn"]
            values = [plain(node["value"]) for node in nodes]
            log_qs = [strip(node["unscaled_log_prob"]) for node in nodes]
            costs = [site_cost(name, run.traces) for run in runs]
            if dim is None:
                stacked = [torch.stack(parts) for parts in (values, log_qs, costs)]
            else:
                event = fn.event_dim
                stacked = [
                    values[0].movedim(dim - event, 0),
                    log_qs[0].movedim(dim, 0),
                    costs[0].movedim(dim, 0),
                ]
            sites.append(ScoreSite(name, fn, *stacked))
        return sites

    # ------------------------------------------------------------------ public API

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """
        :returns: an estimate of the negative ELBO, averaged over the runs.
        :rtype: float
        """
        elbo = 0.0
        for run in self._get_traces(model, guide, args, kwargs):
            for site in sample_sites(run.traces.model_trace).values():
                elbo += torch_item(strip(site["log_prob_sum"])) / self.num_particles
            for site in latent_sites(run.traces.guide_trace).values():
                elbo -= torch_item(strip(site["log_prob_sum"])) / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """
        :returns: a surrogate loss whose value is the negative ELBO estimate and whose
            gradient is the estimator's; call ``.backward()`` on it.
        :rtype: torch.Tensor
        """
        surrogate_loss = self._differentiable_loss(model, guide, args, kwargs)
        warn_if_nan(surrogate_loss, "loss")
        return surrogate_loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ELBO estimate and back-propagates the gradient estimate into every
        parameter that takes part.

        :returns: an estimate of the negative ELBO.
        :rtype: float
        """
        surrogate_loss = self._differentiable_loss(model, guide, args, kwargs)
        if torch.is_tensor(surrogate_loss) and surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss

    # ------------------------------------------------------------------ estimator

    def _differentiable_loss(self, model, guide, args, kwargs):
        runs = list(self._get_traces(model, guide, args, kwargs))
        surrogate_elbo = 0.0
        for run in runs:
            for site in sample_sites(run.traces.model_trace).values():
                surrogate_elbo = surrogate_elbo + strip(site["log_prob_sum"]) / self.num_particles
            for name, site in latent_sites(run.traces.guide_trace).items():
                if name in run.traces.tracked:
                    log_q = strip(site["log_prob_sum"]).detach()
                else:
                    log_q = guide_log_density(site, self.stick_the_landing)
                surrogate_elbo = surrogate_elbo - log_q / self.num_particles
        sites = self._score_sites(runs)
        if sites:
            gradient_only = self._gradient_terms(runs, sites)
            surrogate_elbo = surrogate_elbo + (gradient_only - gradient_only.detach())
        return -surrogate_elbo

    @abstractmethod
    def _gradient_terms(self, runs: list[Run], sites: list[ScoreSite]) -> torch.Tensor:
        """A term whose gradient is the estimator's gradient of ``E[f]`` through the
        non-reparameterised sites (its value is discarded)."""
