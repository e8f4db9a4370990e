"""``TraceGO_ELBO``: the ELBO with GO gradients and statistical back-propagation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pyro.infer.elbo import ELBO
from pyro.infer.tracegraph_elbo import _construct_baseline
from pyro.infer.util import MultiFrameTensor, torch_item
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from pyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from pyro_go.infer.non_finite import check_finite_loss
from pyro_go.infer.perturbation import DiscreteLeafSite, PerturbationReplay
from pyro_go.infer.recorded_linear import RecordedRun
from pyro_go.infer.trace_utils import (
    coupling_free_frames,
    guide_log_density,
    latent_sites,
    model_dependents,
    plain,
    plain_replay_trace,
    sample_sites,
    trace_with_provenance,
    vectorized_frames,
)
from pyro_go.ops.provenance import provenance_of, strip
from pyro_go.poutine.go_sample_messenger import GOSampleMessenger


@dataclass
class _Particle:
    """Traces of one particle, the classification of its discrete guide sites, and what
    a perturbation replay needs."""

    model: Callable
    model_trace: Trace
    guide_trace: Trace
    raw_guide_trace: Trace
    args: tuple
    kwargs: dict
    discrete: dict = field(default_factory=dict)
    internal: dict[str, list[str]] = field(default_factory=dict)
    leaves: dict = field(default_factory=dict)
    recorded: RecordedRun | None = None


class TraceGO_ELBO(ELBO):
    r"""
    An ELBO whose gradient estimator is the GO gradient [1] with statistical
    back-propagation (Theorem 3 of [1]): unbiased, one sample, and with variance far
    below the score function for discrete and non-reparameterisable latent variables.
    It is a drop-in replacement for :class:`~pyro.infer.Trace_ELBO` in
    :class:`~pyro.infer.SVI` with models and guides written with the standard
    :mod:`pyro.distributions`.

    For one particle, with ``f(z) = log p(x, z) − log q(z)`` and guide parameters held
    fixed inside ``log q`` ("sticking the landing" [2]: the dropped term has zero mean),
    the surrogate objective is

    * every model term ``log p``, differentiable in the model parameters and, through
      pathwise samples, in the guide parameters;
    * for continuous guide sites, the pathwise sample (``rsample``; Gamma, Beta and
      Dirichlet use implicit reparameterisation, which *is* GO for continuous
      variables, eq. 9), or for a univariate site with only a ``cdf`` the surrogate
      sample ``y − (F(y) − stop F(y)) / stop p(y)``;
    * for each discrete *leaf* guide site (no children in the guide), the GO term
      ``Σ_v stop(D_v f) · ĝ_v`` of Algorithm 1 (appendix I), with ``D_v f`` computed by
      one vectorised, gradient-free replay of the model over the perturbations of all
      discrete leaf sites, batched across plate slices
      (:mod:`pyro_go.infer.perturbation`).  Bernoulli and Categorical sites use the
      local form (eq. 34), count sites the closed-form variable-nablas of appendix A;
    * for each discrete guide site *with* children in the guide, which Theorem 3 does
      not cover, the score-function term Rao-Blackwellised by provenance like
      :class:`~pyro.infer.TraceGraph_ELBO` (``infer={"baseline": ...}`` works the same
      way), with a one-time warning; ``strict=True`` raises instead.  Appendix B.4 of
      [1] shows how to restructure such guides.

    :param int num_particles: number of particles averaged per estimate.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).  The
        perturbation stack is placed left of every plate.
    :param bool vectorize_particles: vectorise over particles with an outer plate.
    :param bool strict: raise instead of warning when a discrete guide site has
        children in the guide.
    :param str categorical_form: ``"local"`` (default, lower variance, ``K − 1``
        evaluations per element) or ``"raw"`` (Theorem 1, one evaluation per element)
        for Categorical and OneHotCategorical sites; a site may override it with
        ``infer={"go_categorical_form": ...}``.
    :param bool vectorize_perturbations: replay the model once over a stack of all
        perturbations (default).  ``False`` replays them one at a time, for models that
        cannot broadcast over an extra batch dim on the left.
    :param chunk_size: at most this many perturbations per replay; ``None`` for all at
        once; ``"auto"`` (default) sizes chunks so that one replay's perturbed values
        hold about 2^18 elements, which keeps the model's stacked intermediates near
        cache size: the replay is memory-bound, and on a 2-core CPU this made the VAE
        step 2× (batch 24) to 3× (batch 100) faster than one replay of the whole stack.
        Stacks that linear layers absorb are deferred (never formed); once a replay has
        read none of them, the rest of the stack goes in one replay, and so does the
        whole stack on the next step.
    :param bool stick_the_landing: hold guide parameters fixed inside ``log q`` [2]
        (default ``True``); ``False`` keeps the zero-mean score terms of continuous sites.
    :param bool absorb_linear: when a perturbed value goes straight into
        ``F.linear``/``nn.Linear`` or ``@`` with a matrix, compute
        ``L(z) + d_j W[:, i_j]`` instead of the product over the whole stack (appendix
        I's trick, generic; :mod:`pyro_go.infer.linear_absorption`).  Where every term
        that a flip changes is the site's own prior or a ``Bernoulli`` whose logits are
        such a layer's output, the model is not replayed at all: the closed forms use
        the outputs recorded on the run that tracks provenance
        (:mod:`pyro_go.infer.recorded_linear`).  Same gradients up to float rounding;
        ``False`` turns both off.
    :param bool compile_likelihood: compute the closed-form flipped Bernoulli likelihood
        (an observed ``Bernoulli(logits=...)`` of a linear layer's absorbed output) with
        one ``torch.compile`` kernel (:mod:`pyro_go.infer.fused_flips`) instead of five
        eager passes (default ``False``).  A shape compiles on its second step: that
        step takes a few seconds longer in a new process (about one more per new batch
        size).  On CPU a C++ compiler is needed; without one a warning is given and the
        eager reduction is used.  Same values; the discrete VAE's step on one CPU core
        went from 7.8 to 6.7 ms at batch 24 and from 16.0 to 11.8 ms at batch 100.

    **References**

    [1] Yulai Cong, Miaoyun Zhao, Ke Bai, Lawrence Carin (2019). *GO Gradient for
        Expectation-Based Objectives.* ICLR 2019.

    [2] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017). *Sticking the Landing:
        Simple, Lower-Variance Gradient Estimators for Variational Inference.* NeurIPS.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        *,
        strict: bool = False,
        categorical_form: CategoricalForm = "local",
        vectorize_perturbations: bool = True,
        chunk_size: int | Literal["auto"] | None = "auto",
        stick_the_landing: bool = True,
        absorb_linear: bool = True,
        compile_likelihood: bool = False,
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
        if categorical_form not in ("local", "raw"):
            raise ValueError(f"categorical_form must be 'local' or 'raw', got {categorical_form!r}")
        if not (chunk_size in (None, "auto") or (isinstance(chunk_size, int) and chunk_size > 0)):
            raise ValueError(
                f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}"
            )
        self.strict = strict
        self.categorical_form = categorical_form
        self.vectorize_perturbations = vectorize_perturbations
        self.chunk_size = chunk_size
        self.stick_the_landing = stick_the_landing
        self.absorb_linear = absorb_linear
        self.compile_likelihood = compile_likelihood
        self._warned_sites: set[str] = set()
        #: whether the last replays formed nothing dense (then the next step's replay
        #: takes the whole stack at once, see ``chunk_size``)
        self._replays_stayed_deferred = False
        #: perturbation stack size (perturbations + 1 base entry) summed over the
        #: particles of the last estimate: the cost of ``D_y f`` in model evaluations
        #: (replayed, or taken from the recorded linear layers)
        self.last_num_evaluations = 0

    # ------------------------------------------------------------------ traces

    def _get_trace(self, model: Callable, guide: Callable, args, kwargs) -> _Particle:
        """Runs the guide (GO sampling, provenance on discrete values), classifies its
        discrete sites as leaves or internal, and replays the model against it.

        Guide log-densities are computed from provenance-free values, so a guide site's
        provenance names exactly the discrete sites its parameters depend on.  The model
        is replayed with the tracked values, so each model term names the discrete
        sites it depends on: that decides which terms enter ``D_y f``, the safety rule
        for plates, and the Rao-Blackwellised costs of internal sites.  With
        ``absorb_linear`` the linear layers applied to tracked values are recorded, which
        may spare ``D_y f`` its replay (:mod:`pyro_go.infer.recorded_linear`).
        """
        sampler = GOSampleMessenger(self.categorical_form)
        record_linear = self.absorb_linear and self.vectorize_perturbations
        raw_guide_trace, guide_trace, model_trace, tracked = trace_with_provenance(
            sampler(guide), model, args, kwargs, self.max_plate_nesting, record_linear
        )
        discrete = self._discrete_sites(guide_trace, tracked)
        internal = self._internal_sites(guide_trace, discrete)
        particle = _Particle(model, model_trace, guide_trace, raw_guide_trace, args, kwargs)
        if record_linear:
            particle.recorded = RecordedRun(model_trace, tracked)
        particle.discrete = discrete
        particle.internal = internal
        particle.leaves = {n: rule for n, rule in discrete.items() if n not in internal}
        return particle

    # ------------------------------------------------------------------ public API

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """
        :returns: an estimate of the negative ELBO from ``num_particles`` samples.
        :rtype: float
        """
        elbo = 0.0
        for particle in self._get_traces(model, guide, args, kwargs):
            elbo += self._elbo_value(particle) / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """
        :returns: a surrogate loss whose value is the negative ELBO estimate and whose
            gradient is the GO gradient estimate; call ``.backward()`` on it.
        :rtype: torch.Tensor
        """
        surrogate_loss = self._differentiable_loss(model, guide, args, kwargs)
        warn_if_nan(surrogate_loss, "loss")
        return surrogate_loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ELBO estimate and back-propagates the GO gradient estimate into
        every parameter that takes part.

        :returns: an estimate of the negative ELBO.
        :rtype: float
        """
        surrogate_loss = self._differentiable_loss(model, guide, args, kwargs)
        if torch.is_tensor(surrogate_loss) and surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss

    def _differentiable_loss(self, model, guide, args, kwargs):
        self.last_num_evaluations = 0
        surrogate_loss = 0.0
        for particle in self._get_traces(model, guide, args, kwargs):
            particle_loss = self._surrogate_loss(particle)
            check_finite_loss(
                particle_loss, particle.model_trace, particle.guide_trace, "TraceGO_ELBO"
            )
            surrogate_loss = surrogate_loss + particle_loss / self.num_particles
        return surrogate_loss

    # ------------------------------------------------------------------ estimator

    @staticmethod
    def _elbo_value(particle: _Particle) -> float:
        elbo = 0.0
        for site in sample_sites(particle.model_trace).values():
            elbo += torch_item(strip(site["log_prob_sum"]))
        for site in latent_sites(particle.guide_trace).values():
            elbo -= torch_item(strip(site["log_prob_sum"]))
        return elbo

    def _discrete_sites(self, guide_trace, tracked: dict) -> dict:
        discrete = {}
        for name in tracked:
            site = guide_trace.nodes[name]
            form = site["infer"].get("go_categorical_form", self.categorical_form)
            discrete[name] = get_go_rule(site["fn"], form)
        return discrete

    def _internal_sites(self, guide_trace, discrete: dict) -> dict[str, list[str]]:
        """Discrete sites with children in the guide: name -> names of the children.
        A child is a latent guide site whose distribution's parameters carry the
        discrete site's provenance."""
        children: dict[str, list[str]] = {}
        for name, site in latent_sites(guide_trace).items():
            for parent in provenance_of(site["log_prob"]) & discrete.keys():
                if parent != name:
                    children.setdefault(parent, []).append(name)
        for name, kids in children.items():
            self._handle_internal_site(name, kids)
        return children

    def _handle_internal_site(self, name: str, children: list[str]) -> None:
        message = (
            f"TraceGO_ELBO: discrete guide site '{name}' has children in the guide "
            f"({', '.join(children)}), which statistical back-propagation (GO paper, "
            "Theorem 3) does not cover. Restructure the guide so that discrete sites are "
            "leaves (GO paper, appendix B.4: e.g. condition the children on continuous "
            "variables instead)"
        )
        if self.strict:
            raise ValueError(
                message + ", or construct TraceGO_ELBO(strict=False) to fall "
                "back to the score-function estimator for this site."
            )
        if name not in self._warned_sites:
            self._warned_sites.add(name)
            warnings.warn(
                message + ". Until then its gradient uses the score-function estimator, "
                "Rao-Blackwellised like TraceGraph_ELBO (add infer={'baseline': ...} to "
                "reduce its variance); pass strict=True to make this an error.",
                UserWarning,
                stacklevel=4,
            )

    def _depth(self, particle: _Particle) -> int:
        depth = 0 if math.isinf(self.max_plate_nesting) else int(self.max_plate_nesting)
        for trace in (particle.model_trace, particle.guide_trace):
            for site in sample_sites(trace).values():
                depth = max(depth, len(getattr(site["fn"], "batch_shape", ())))
                for frame in vectorized_frames(site):
                    depth = max(depth, -frame.dim)
        return depth

    def _leaf_sites(self, particle: _Particle, leaves: dict) -> tuple[list, dict]:
        """Layouts of the discrete leaf sites and, for each model site, the leaf sites it
        depends on (by provenance)."""
        dependents = model_dependents(particle.model_trace, leaves.keys())
        layouts = []
        for name, rule in leaves.items():
            guide_site = particle.guide_trace.nodes[name]
            frames = coupling_free_frames(name, guide_site, particle.model_trace, dependents)
            value = plain(guide_site["value"])
            expected = guide_site["fn"].batch_shape + guide_site["fn"].event_shape
            if value.shape != expected:
                raise ValueError(
                    f"TraceGO_ELBO: guide site '{name}' has a value of shape "
                    f"{tuple(value.shape)} but its distribution has shape {tuple(expected)}; "
                    "GO needs the value to match batch_shape + event_shape."
                )
            layouts.append(DiscreteLeafSite(name, rule, guide_site, value, frames))
        return layouts, dependents

    def _go_terms(self, particle: _Particle, leaves: dict) -> torch.Tensor:
        layouts, dependents = self._leaf_sites(particle, leaves)
        plain_trace = plain_replay_trace(particle.raw_guide_trace, particle.model_trace)
        replay = PerturbationReplay(
            particle.model,
            plain_trace,
            layouts,
            dependents,
            self._depth(particle),
            self.vectorize_perturbations,
            self.chunk_size,
            self.absorb_linear,
            whole_first=self._replays_stayed_deferred,
            compile_likelihood=self.compile_likelihood,
            recorded=particle.recorded,
        )
        deltas = replay.deltas(particle.args, particle.kwargs)
        self._replays_stayed_deferred = replay.stayed_deferred
        self.last_num_evaluations += replay.num_entries
        total = 0.0
        for layout in layouts:
            base_fn = unwrap_distribution(layout.guide_site["fn"])
            term = layout.rule.surrogate(base_fn, layout.value, deltas[layout.name])
            total = total + term.sum()
        return total

    def _score_terms(self, particle: _Particle, internal: dict) -> tuple:
        """Score-function terms (and baseline losses) of discrete internal sites."""
        surrogate = 0.0
        baseline_loss = 0.0
        model_sites = sample_sites(particle.model_trace)
        guide_sites = latent_sites(particle.guide_trace)
        for name in internal:
            cost = MultiFrameTensor()
            for site in model_sites.values():
                if name in provenance_of(site["log_prob"]):
                    cost.add((site["cond_indep_stack"], plain(site["log_prob"])))
            for other, site in guide_sites.items():
                if other == name or name in provenance_of(site["log_prob"]):
                    cost.add((site["cond_indep_stack"], -plain(site["log_prob"])))
            guide_site = guide_sites[name]
            downstream_cost = cost.sum_to(guide_site["cond_indep_stack"])
            use_baseline, site_baseline_loss, baseline = _construct_baseline(
                name, guide_site, downstream_cost
            )
            if use_baseline:
                downstream_cost = downstream_cost - baseline
                baseline_loss = baseline_loss + site_baseline_loss
            score = strip(guide_site["log_prob"])
            surrogate = surrogate + (score * downstream_cost.detach()).sum()
        return surrogate, baseline_loss

    def _surrogate_loss(self, particle: _Particle) -> torch.Tensor:
        guide_trace = particle.guide_trace
        discrete, internal, leaves = particle.discrete, particle.internal, particle.leaves

        surrogate_elbo = 0.0
        for site in sample_sites(particle.model_trace).values():
            surrogate_elbo = surrogate_elbo + strip(site["log_prob_sum"])
        for name, site in latent_sites(guide_trace).items():
            if name in discrete:
                surrogate_elbo = surrogate_elbo - strip(site["log_prob_sum"]).detach()
            else:
                surrogate_elbo = surrogate_elbo - guide_log_density(site, self.stick_the_landing)

        gradient_only = 0.0
        if leaves:
            gradient_only = gradient_only + self._go_terms(particle, leaves)
        baseline_loss = 0.0
        if internal:
            score, baseline_loss = self._score_terms(particle, internal)
            gradient_only = gradient_only + score
        if torch.is_tensor(gradient_only):
            surrogate_elbo = surrogate_elbo + (gradient_only - gradient_only.detach())
        if torch.is_tensor(baseline_loss):
            surrogate_elbo = surrogate_elbo - (baseline_loss - baseline_loss.detach())
        return -surrogate_elbo
