"""``TraceRELAX_ELBO``: the ELBO with RELAX / REBAR gradients for Bernoulli and
Categorical guide sites."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.util import MultiFrameTensor, torch_item
from pyro.optim import PyroOptim
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from pyro_go.infer.control_variates import RELAX, ControlVariate
from pyro_go.infer.non_finite import check_finite_loss
from pyro_go.infer.relax_site import RelaxSite, relaxed_log_prob
from pyro_go.infer.trace_utils import (
    coupling_free_frames,
    guide_log_density,
    latent_sites,
    model_dependents,
    plain,
    plain_replay_trace,
    sample_sites,
    trace_with_provenance,
)
from pyro_go.ops.provenance import provenance_of, strip
from pyro_go.poutine.relax_sample_messenger import RelaxSampleMessenger


@dataclass
class _Particle:
    """Traces of one particle and its RELAX sites."""

    model: Callable
    model_trace: Trace
    guide_trace: Trace
    plain_trace: Trace
    args: tuple
    kwargs: dict
    sites: dict[str, RelaxSite]
    dependents: dict[str, frozenset]


class TraceRELAX_ELBO(ELBO):
    r"""
    An ELBO whose gradient estimator is RELAX [1] (REBAR [2] as a special case) for
    Bernoulli, Categorical and OneHotCategorical guide sites, and the pathwise gradient
    for reparameterisable continuous guide sites.  A drop-in replacement for
    :class:`~pyro.infer.Trace_ELBO` in :class:`~pyro.infer.SVI`, useful for black-box
    models and as a comparison for :class:`~pyro_go.TraceGO_ELBO`.

    For each such site, with ``f`` the site's cost (its ``log q`` minus the model terms
    that depend on it, per independent plate slice), the sample is written
    ``b = H(z)``, ``z = z(l, u)`` in terms of its logits ``l`` (eq. 3), a second sample
    ``z̃ ~ p(z | b)`` is reparameterised by fresh noise, and the gradient on the logits is
    (eq. 8, 9)

    .. math:: \hat g_l = [f(b) − c(\tilde z)]\, ∂_l \log p(b) + ∂_l c(z) − ∂_l c(\tilde z),

    back-propagated into the guide's parameters through ``l``.  The control variate
    ``c`` (:mod:`pyro_go.infer.control_variates`: :class:`REBAR`, :class:`RELAX`,
    :class:`Baseline`) has parameters in the param store, which
    :class:`~pyro.infer.SVI`'s optimizer updates on ``∂/∂ψ Σ ĝ_l²`` (eq. 10, double
    back-propagation), one estimator per site's logits as in [1].  ``f(b)`` includes the
    site's own ``log q(b)``; the zero-mean direct term ``∂_l log q(b)`` is dropped, like
    sticking the landing [3] for continuous sites.

    Sites on which another guide site depends, and sites of any other distribution,
    raise a :class:`ValueError` (:class:`~pyro_go.TraceGO_ELBO` covers them).

    :param control_variate: a :class:`ControlVariate`; default
        ``RELAX(rebar=True)``, the paper's "relaxed REBAR".  Use ``RELAX()`` when the
        model cannot take relaxed values at the site (black-box ``f``).
    :param int num_particles: number of particles averaged per estimate.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param bool vectorize_particles: vectorise over particles with an outer plate.
    :param control_variate_optim: a :class:`~pyro.optim.PyroOptim` that steps the
        control-variate parameters inside :meth:`loss_and_grads` instead of ``SVI``'s
        optimizer, e.g. the reference setting ``pyro.optim.Adam({"lr": 10 * lr,
        "betas": (0.9, 0.99999)})``.

    Control-variate parameters are named after the site (``"<site>.relax_eta"``, ...): two
    ELBOs trained on the same site names share them (``pyro.module`` returns the stored
    tensors), so give each its own param store or rename the sites
    (:func:`pyro.contrib.autoname.scope`) to compare estimators side by side.

    The param store is the control variate's whole state: a run saved with
    ``pyro.get_param_store().save(path)`` (and the optimizers' ``save``) and resumed in a
    new process with new ``RELAX()`` / ``TraceRELAX_ELBO`` objects, after ``load``-ing
    both and restoring the RNG state, takes exactly the steps of the uninterrupted run:
    stored network weights replace the new networks' own
    (:mod:`pyro_go.infer.control_variates`).

    Non-finite observed data, and a non-finite loss or variance objective, raise a
    :class:`ValueError` naming the sites before anything is back-propagated, so the
    param store is left as it was; so does a latent model site without a guide site
    that asks for enumeration (written for :class:`~pyro.infer.TraceEnum_ELBO`).

    After each gradient estimate :attr:`last_variance` maps each site to ``Σ ĝ_l²``
    averaged over particles: the single-sample estimate of ``tr Var ĝ_l + |E ĝ_l|²``
    that the control variate is trained to minimise.

    **References**

    [1] Will Grathwohl, Dami Choi, Yuhuai Wu, Geoffrey Roeder, David Duvenaud (2018).
        *Backpropagation through the Void: Optimizing control variates for black-box
        gradient estimation.* ICLR.

    [2] George Tucker, Andriy Mnih, Chris J. Maddison, Dieterich Lawson, Jascha
        Sohl-Dickstein (2017). *REBAR: Low-variance, unbiased gradient estimates for
        discrete latent variable models.* NeurIPS.

    [3] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017).
        *Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference.* NeurIPS.
    """

    def __init__(
        self,
        control_variate: ControlVariate | None = None,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        *,
        control_variate_optim: PyroOptim | None = None,
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
        if control_variate is None:
            control_variate = RELAX(rebar=True)
        if not isinstance(control_variate, ControlVariate):
            raise TypeError(
                "control_variate must be a pyro_go ControlVariate (REBAR, RELAX, Baseline), "
                f"got {control_variate!r}"
            )
        self.control_variate = control_variate
        self.control_variate_optim = control_variate_optim
        #: per site, ``Σ ĝ_l²`` of the last estimate, averaged over particles
        self.last_variance: dict[str, float] = {}

    # ------------------------------------------------------------------ traces

    def _get_trace(self, model: Callable, guide: Callable, args, kwargs) -> _Particle:
        sampler = RelaxSampleMessenger()
        raw_guide_trace, guide_trace, model_trace, tracked, *_ = trace_with_provenance(
            sampler(guide), model, args, kwargs, self.max_plate_nesting, elbo="TraceRELAX_ELBO"
        )
        for name, site in latent_sites(guide_trace).items():
            for parent in provenance_of(site["log_prob"]) & tracked.keys():
                if parent != name:
                    raise ValueError(
                        f"TraceRELAX_ELBO: guide site '{name}' depends on the discrete guide "
                        f"site '{parent}'. RELAX's control variate needs '{parent}' to be a "
                        "leaf of the guide; use pyro_go.TraceGO_ELBO for this guide."
                    )
        dependents = model_dependents(model_trace, tracked.keys())
        plain_trace = plain_replay_trace(raw_guide_trace, model_trace)
        sites = {}
        for name, draw in sampler.draws.items():
            guide_site = guide_trace.nodes[name]
            sites[name] = RelaxSite(
                name,
                draw.kind,
                guide_site,
                draw.logits,
                draw.u,
                draw.v,
                plain(tracked[name]),
                coupling_free_frames(name, guide_site, model_trace, dependents),
            )
        return _Particle(
            model, model_trace, guide_trace, plain_trace, args, kwargs, sites, dependents
        )

    # ------------------------------------------------------------------ public API

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """
        :returns: an estimate of the negative ELBO from ``num_particles`` samples.
        :rtype: float
        """
        elbo = 0.0
        for particle in self._get_traces(model, guide, args, kwargs):
            for site in sample_sites(particle.model_trace).values():
                elbo += torch_item(strip(site["log_prob_sum"])) / self.num_particles
            for site in latent_sites(particle.guide_trace).values():
                elbo -= torch_item(strip(site["log_prob_sum"])) / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """
        :returns: a surrogate loss whose value is the negative ELBO estimate and whose
            gradient is the RELAX estimate for the model and guide parameters and
            ``∂/∂ψ Σ ĝ²`` for the control-variate parameters; call ``.backward()`` on
            it.  With ``control_variate_optim`` that optimizer steps the control-variate
            parameters here instead, as in :meth:`loss_and_grads` (so a loss used in a
            ``torch.optim`` or DDP training step trains them too).
        :rtype: torch.Tensor
        """
        surrogate_loss, variance_grads = self._estimate(model, guide, args, kwargs)
        surrogate_loss = self._train_control_variate(surrogate_loss, variance_grads)
        warn_if_nan(surrogate_loss, "loss")
        return surrogate_loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Computes the ELBO estimate, back-propagates the RELAX estimate into the model
        and guide parameters and the variance gradient into the control variate's.

        :returns: an estimate of the negative ELBO.
        :rtype: float
        """
        surrogate_loss, variance_grads = self._estimate(model, guide, args, kwargs)
        surrogate_loss = self._train_control_variate(surrogate_loss, variance_grads)
        if torch.is_tensor(surrogate_loss) and surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(surrogate_loss)
        warn_if_nan(loss, "loss")
        return loss

    def _train_control_variate(self, surrogate_loss, variance_grads: dict):
        """Adds the variance gradient to the surrogate loss, or steps
        ``control_variate_optim`` with it."""
        if self.control_variate_optim is None:
            return surrogate_loss + _gradient_only(variance_grads)
        if variance_grads:
            for param, grad in variance_grads.items():
                param.grad = grad
            self.control_variate_optim(list(variance_grads))
            for param in variance_grads:
                param.grad = None
        return surrogate_loss

    # ------------------------------------------------------------------ estimator

    def _estimate(self, model, guide, args, kwargs) -> tuple:
        """The surrogate loss over particles, and ``∂/∂ψ`` of the variance objective for
        each control-variate parameter ``ψ`` (unconstrained)."""
        self.last_variance = {}
        surrogate_loss = 0.0
        variance_grads: dict[torch.Tensor, torch.Tensor] = {}
        for particle in self._get_traces(model, guide, args, kwargs):
            # with its own optimizer, the control variate's parameters are hidden from SVI
            hide = poutine.block() if self.control_variate_optim else contextlib.nullcontext()
            with hide, poutine.trace(param_only=True) as capture:
                particle_loss, variance = self._particle_estimate(particle)
            traces = particle.model_trace, particle.guide_trace
            check_finite_loss(particle_loss, *traces, "TraceRELAX_ELBO")
            check_finite_loss(variance, *traces, "TraceRELAX_ELBO", "the variance objective")
            surrogate_loss = surrogate_loss + particle_loss / self.num_particles
            params = [node["value"].unconstrained() for node in capture.trace.nodes.values()]
            params = [param for param in params if param.requires_grad]
            if params and torch.is_tensor(variance) and variance.requires_grad:
                grads = torch.autograd.grad(variance, params, allow_unused=True)
                for param, grad in zip(params, grads, strict=True):
                    if grad is not None:
                        grad = grad / self.num_particles
                        variance_grads[param] = variance_grads.get(param, 0.0) + grad
        return surrogate_loss, variance_grads

    def _particle_estimate(self, particle: _Particle) -> tuple:
        surrogate_elbo = 0.0
        for site in sample_sites(particle.model_trace).values():
            surrogate_elbo = surrogate_elbo + strip(site["log_prob_sum"])
        for name, site in latent_sites(particle.guide_trace).items():
            if name in particle.sites:
                surrogate_elbo = surrogate_elbo - strip(site["log_prob_sum"]).detach()
            else:
                surrogate_elbo = surrogate_elbo - guide_log_density(site, True)

        gradient_only = 0.0
        variance = 0.0
        for name, site in particle.sites.items():
            logits_grad, site_variance = self._site_estimate(particle, site)
            gradient_only = gradient_only + (logits_grad.detach() * site.logits).sum()
            variance = variance + site_variance
            self.last_variance[name] = self.last_variance.get(name, 0.0) + (
                torch_item(site_variance) / self.num_particles
            )
        surrogate_loss = -surrogate_elbo
        if torch.is_tensor(gradient_only):
            surrogate_loss = surrogate_loss + (gradient_only - gradient_only.detach())
        return surrogate_loss, variance

    def _site_estimate(self, particle: _Particle, site: RelaxSite) -> tuple:
        """``ĝ_l`` (eq. 8/9) for one site and its variance objective ``Σ ĝ_l²``."""
        logits = site.logits.detach().requires_grad_()
        hard_cost = self._hard_cost(particle, site)

        def relaxed_cost(value: torch.Tensor) -> torch.Tensor:
            return self._relaxed_cost(particle, site, value)

        control = self.control_variate
        args, kwargs = particle.args, particle.kwargs
        control_at_tilde = control(site, site.z_tilde(logits), relaxed_cost, args, kwargs)
        weight = site.broadcast_to_logits(hard_cost - control_at_tilde)
        logits_grad = weight * site.score(logits.detach())
        if control.depends_on_noise:
            control_at_z = control(site, site.z(logits), relaxed_cost, args, kwargs)
            (correction,) = torch.autograd.grad(
                (control_at_z - control_at_tilde).sum(), logits, create_graph=True
            )
            logits_grad = logits_grad + correction
        return logits_grad, logits_grad.pow(2).sum()

    @staticmethod
    def _hard_cost(particle: _Particle, site: RelaxSite) -> torch.Tensor:
        """``f(b)`` per slice: the site's ``log q`` minus the model terms that depend on it."""
        cost = MultiFrameTensor()
        guide_site = site.guide_site
        cost.add((guide_site["cond_indep_stack"], plain(guide_site["log_prob"])))
        for name, sources in particle.dependents.items():
            if site.name in sources:
                model_site = particle.model_trace.nodes[name]
                cost.add((model_site["cond_indep_stack"], -plain(model_site["log_prob"])))
        return site.as_cost(cost.sum_to(site.frames))

    @staticmethod
    def _relaxed_cost(particle: _Particle, site: RelaxSite, value: torch.Tensor):
        """``f`` per slice with the site's value replaced by ``value`` (a relaxed sample),
        from a replay of the model; differentiable in ``value`` only as far as the
        control variate needs (nothing here is differentiated w.r.t. model parameters)."""
        trace = particle.plain_trace.copy()
        trace.nodes[site.name] = dict(trace.nodes[site.name], value=value)
        dependents = {name for name, sources in particle.dependents.items() if site.name in sources}
        with pyro.validation_enabled(False), poutine.block(hide_types=["param"]):
            model_trace = poutine.trace(poutine.replay(particle.model, trace=trace)).get_trace(
                *particle.args, **particle.kwargs
            )
        guide_site = site.guide_site
        cost = MultiFrameTensor()
        log_q = relaxed_log_prob(guide_site["fn"], value)
        log_q = scale_and_mask(log_q, guide_site["scale"], guide_site["mask"])
        cost.add((guide_site["cond_indep_stack"], log_q))
        for name in dependents:
            model_site = model_trace.nodes[name]
            if name == site.name:
                log_p = relaxed_log_prob(model_site["fn"], model_site["value"])
            else:
                log_p = model_site["fn"].log_prob(model_site["value"])
            log_p = scale_and_mask(log_p, model_site["scale"], model_site["mask"])
            cost.add((model_site["cond_indep_stack"], -log_p))
        return site.as_cost(cost.sum_to(site.frames))


def _gradient_only(grads: dict) -> torch.Tensor | float:
    """A zero-valued term whose gradient w.r.t. each parameter is the given gradient."""
    term = 0.0
    for param, grad in grads.items():
        term = term + (grad.detach() * param).sum()
    if torch.is_tensor(term):
        term = term - term.detach()
    return term
