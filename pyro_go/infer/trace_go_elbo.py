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
from pyro_go.ops.special import naming_count_site
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
    #: leaf sites that the model reads as Python data: replayed one perturbation at a time
    structural: frozenset = frozenset()
    recorded: RecordedRun | None = None
    #: guide sites given the score function: name -> why (``None``: asked for)
    score_sites: dict[str, str | None] = field(default_factory=dict)


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
      variables, eq. 9, also when marked ``has_rsample_(False)``), or for a univariate
      site with only a ``cdf`` differentiable in every parameter (checked by autograd)
      the surrogate sample ``y − (F(y) − stop F(y)) / stop p(y)``;
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
      [1] shows how to restructure such guides.  Continuous children (M2's ``z | y``,
      AIR's ``z_where``/``z_what``) keep their pathwise gradient given the discrete
      value;
    * for each guide site with no GO rule (``Empirical``; a continuous class without
      ``rsample`` whose ``cdf`` is missing or not differentiable in some parameter),
      the same Rao-Blackwellised score-function term, with a one-time warning naming
      the site; ``strict=True`` raises instead.  So every guide that
      :class:`~pyro.infer.TraceGraph_ELBO` trains, this ELBO trains.  A site marked
      ``infer={"go_score_function": True}`` gets this term without a warning: GO, like
      any pathwise gradient, needs ``f`` differentiable in a continuous value, which
      fails where the value decides control flow.

    **Python control flow.**  A discrete value that the guide or the model reads as
    Python data (``bool``, ``int``, ``float``, ``.item()``, ``.tolist()``, an ``if``,
    an index, a ``range`` bound) may decide which sites follow.  Every term sampled
    after such a read counts as depending on the site read (and every model term on a
    site the guide read).  A site the guide reads is internal (score function, its
    cost holding every later guide and model term), even where nothing follows the
    read in a sample.  A leaf site the model reads is replayed one perturbation at a
    time, each replay counting every model term, including terms that exist only
    under the perturbation: over a stack the read would steer all perturbations alike.
    Reads by distributions' argument and support validation do not count.

    :param int num_particles: number of particles averaged per estimate.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).  The
        perturbation stack is placed left of every plate.
    :param bool vectorize_particles: vectorise over particles with an outer plate.
    :param bool strict: raise instead of warning when a discrete guide site has
        children in the guide or a guide site has no GO rule.
    :param str categorical_form: ``"local"`` (default, lower variance, ``K − 1``
        evaluations per element) or ``"raw"`` (Theorem 1, one evaluation per element)
        for Categorical and OneHotCategorical sites; a site may override it with
        ``infer={"go_categorical_form": ...}``.
    :param bool vectorize_perturbations: replay the model once over a stack of all
        perturbations (default).  ``False`` replays them one at a time, for models that
        cannot broadcast over an extra batch dim on the left.  Sites the model reads as
        Python data are replayed one at a time either way.
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
        eager reduction is used.  Same values, fewer passes over memory
        (``benchmarks/vae_step_time.py`` measures both).

    **References**

    [1] Yulai Cong, Miaoyun Zhao, Ke Bai, Lawrence Carin (2019).
        *GO Gradient for Expectation-Based Objectives.* ICLR 2019.

    [2] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017).
        *Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference.* NeurIPS.
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
        traces = trace_with_provenance(
            sampler(guide), model, args, kwargs, self.max_plate_nesting, record_linear
        )
        scored = sampler.score_function_sites
        guide_trace = traces.guide_trace
        discrete = self._discrete_sites(guide_trace, [n for n in traces.tracked if n not in scored])
        internal = self._internal_sites(guide_trace, discrete, traces.guide_reads)
        particle = _Particle(
            model, traces.model_trace, guide_trace, traces.raw_guide_trace, args, kwargs
        )
        if record_linear:
            particle.recorded = RecordedRun(traces.model_trace, traces.tracked)
        particle.score_sites = scored
        for name, reason in particle.score_sites.items():
            if reason is not None:
                self._handle_score_function_site(name, guide_trace.nodes[name]["fn"], reason)
        particle.discrete = discrete
        particle.internal = internal
        particle.leaves = {n: rule for n, rule in discrete.items() if n not in internal}
        particle.structural = traces.model_reads & particle.leaves.keys()
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
            rule = get_go_rule(site["fn"], form)
            if rule is not None and rule.kind == "discrete":
                discrete[name] = rule
        return discrete

    def _internal_sites(
        self, guide_trace, discrete: dict, guide_reads: frozenset
    ) -> dict[str, list[str]]:
        """Discrete sites with children in the guide: name -> names of the children.
        A child is a latent guide site (discrete or continuous) whose log-density
        carries the discrete site's provenance: its distribution's parameters were
        computed from the site's value, or the guide read the value as Python data
        before sampling it (its existence may depend on the value).  A site the guide
        reads as Python data is internal even where no site follows the read in this
        sample: another value could make sites follow, which a replay of the model
        cannot sample (and choosing the estimator by the sampled value would bias it)."""
        children: dict[str, list[str]] = {name: [] for name in guide_reads & discrete.keys()}
        for name, site in latent_sites(guide_trace).items():
            for parent in provenance_of(site["log_prob"]) & discrete.keys():
                if parent != name:
                    children.setdefault(parent, []).append(name)
        for name, kids in children.items():
            self._handle_internal_site(name, kids, name in guide_reads)
        return children

    def _handle_internal_site(self, name: str, children: list[str], read: bool) -> None:
        how = (
            f" (the guide reads '{name}' as a Python value, so the guide's structure may "
            "depend on it and every guide site sampled after that read counts as its child)"
            if read
            else ""
        )
        message = (
            f"TraceGO_ELBO: discrete guide site '{name}' has children in the guide "
            f"({', '.join(children) or 'none in this sample'}){how}, which statistical "
            "back-propagation (GO paper, "
            "Theorem 3) does not cover. Restructure the guide so that discrete sites are "
            "leaves (GO paper, appendix B.4: e.g. condition the children on continuous "
            "variables instead)"
        )
        self._fall_back_to_score_function(name, message)

    def _handle_score_function_site(self, name: str, fn, reason: str) -> None:
        message = (
            f"TraceGO_ELBO: guide site '{name}' has distribution "
            f"{type(unwrap_distribution(fn)).__name__}, which has no GO gradient here ({reason}). "
            "For GO, give it a pathwise rsample or a cdf differentiable in every "
            "parameter, or register a rule with pyro_go.register_go_rule(YourClass, rule)"
        )
        self._fall_back_to_score_function(name, message)

    def _fall_back_to_score_function(self, name: str, message: str) -> None:
        """Raise (``strict``) or warn once per site that ``name`` gets the score function."""
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
                stacklevel=3,
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
        depends on (by provenance).  A site the model reads as Python data gets no plate
        slices of its own: the read may mix them."""
        dependents = model_dependents(particle.model_trace, leaves.keys())
        layouts = []
        for name, rule in leaves.items():
            guide_site = particle.guide_trace.nodes[name]
            frames = ()
            if name not in particle.structural:
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
        """``Σ_v stop(D_v f) · ĝ_v`` over the leaf sites.  Sites that the model reads as
        Python data (``if z.all()``, ``range(int(n))``) are replayed one perturbation at
        a time, each replay counting every model term: over a stack, the read would
        steer all perturbations the same way, and a perturbation may change which terms
        exist.  The other sites' replays hold them at their sampled value."""
        layouts, dependents = self._leaf_sites(particle, leaves)
        plain_trace = plain_replay_trace(particle.raw_guide_trace, particle.model_trace)
        depth = self._depth(particle)
        ordinary = [layout for layout in layouts if layout.name not in particle.structural]
        structural = [layout for layout in layouts if layout.name in particle.structural]
        deltas = {}
        if ordinary:
            replay = PerturbationReplay(
                particle.model,
                plain_trace,
                ordinary,
                dependents,
                depth,
                self.vectorize_perturbations,
                self.chunk_size,
                self.absorb_linear,
                whole_first=self._replays_stayed_deferred,
                compile_likelihood=self.compile_likelihood,
                recorded=particle.recorded,
            )
            deltas.update(replay.deltas(particle.args, particle.kwargs))
            self._replays_stayed_deferred = replay.stayed_deferred
            self.last_num_evaluations += replay.num_entries
        if structural:
            replay = PerturbationReplay(
                particle.model,
                plain_trace,
                structural,
                dependents,
                depth,
                vectorize=False,
                chunk_size=1,
                absorb_linear=False,
                every_term=True,
            )
            deltas.update(replay.deltas(particle.args, particle.kwargs))
            self.last_num_evaluations += replay.num_entries
        total = 0.0
        for layout in layouts:
            base_fn = unwrap_distribution(layout.guide_site["fn"])
            with naming_count_site(f"TraceGO_ELBO: guide site '{layout.name}'"):
                term = layout.rule.surrogate(base_fn, layout.value, deltas[layout.name])
            total = total + term.sum()
        return total

    def _score_terms(self, particle: _Particle, internal) -> tuple:
        """Score-function terms (and baseline losses) of the named guide sites (discrete
        internal sites and sites without a GO rule)."""
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
            # the costs carry the plates' scales already: the score is unscaled (as in
            # Pyro's ScoreParts), or a subsample's scale would count twice
            score = strip(guide_site["unscaled_log_prob"])
            surrogate = surrogate + (score * downstream_cost.detach()).sum()
        return surrogate, baseline_loss

    def _surrogate_loss(self, particle: _Particle) -> torch.Tensor:
        guide_trace = particle.guide_trace
        discrete, internal, leaves = particle.discrete, particle.internal, particle.leaves
        scored = [*internal, *particle.score_sites]

        surrogate_elbo = 0.0
        for site in sample_sites(particle.model_trace).values():
            surrogate_elbo = surrogate_elbo + strip(site["log_prob_sum"])
        for name, site in latent_sites(guide_trace).items():
            if name in discrete or name in particle.score_sites:
                surrogate_elbo = surrogate_elbo - strip(site["log_prob_sum"]).detach()
            else:
                surrogate_elbo = surrogate_elbo - guide_log_density(site, self.stick_the_landing)

        gradient_only = 0.0
        if leaves:
            gradient_only = gradient_only + self._go_terms(particle, leaves)
        baseline_loss = 0.0
        if scored:
            score, baseline_loss = self._score_terms(particle, scored)
            gradient_only = gradient_only + score
        if torch.is_tensor(gradient_only):
            surrogate_elbo = surrogate_elbo + (gradient_only - gradient_only.detach())
        if torch.is_tensor(baseline_loss):
            surrogate_elbo = surrogate_elbo - (baseline_loss - baseline_loss.detach())
        return -surrogate_elbo
