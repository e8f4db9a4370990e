"""``TraceGO_ELBO`` for NumPyro: the ELBO with GO gradients and statistical
back-propagation, ``jit``-able end to end."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.elbo import ELBO, MultiFrameTensor

from numpyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from numpyro_go.handlers import go_sample
from numpyro_go.infer.perturbation import LeafLayout, PerturbationReplay
from numpyro_go.infer.trace_utils import (
    CONCRETIZATION_ERRORS,
    control_flow_error,
    frame_names,
    latent_sites,
    log_prob,
    replayed_model_trace,
    sample_sites,
    score_function_deps,
)
from numpyro_go.ops.special import naming_count_site


class TraceGO_ELBO(ELBO):
    r"""
    An ELBO whose gradient estimator is the GO gradient [1] with statistical
    back-propagation (Theorem 3 of [1]): unbiased, one sample, and with variance far
    below the score function for discrete and non-reparameterisable latent variables.
    A drop-in ``loss=`` for :class:`numpyro.infer.SVI` with models and guides written
    with the standard :mod:`numpyro.distributions`; ``svi.update`` and ``svi.run`` stay
    ``jax.jit``-compiled.

    For one particle, with ``f(z) = log p(x, z) − log q(z)`` and guide parameters held
    fixed inside ``log q`` ("sticking the landing" [2]), the surrogate objective is

    * every model term ``log p``, differentiable in the model parameters and, through
      pathwise samples, in the guide parameters;
    * for continuous guide sites, the pathwise sample (JAX's implicit gradients for
      Gamma, Beta and Dirichlet are GO for continuous variables, eq. 9, also where a
      subclass declares no ``reparametrized_params``), or for a univariate site with
      only a ``cdf`` differentiable in every parameter (checked by tracing its
      gradient) the surrogate sample ``y − (F(y) − stop F(y)) / stop p(y)``;
    * for each discrete *leaf* guide site (no children in the guide), the GO term
      ``Σ_v stop(D_v f) · ĝ_v`` of Algorithm 1 (appendix I), with ``D_v f`` from one
      ``jax.vmap`` of a gradient-free model replay over the site's perturbations,
      batched across plate slices (:mod:`numpyro_go.infer.perturbation`).  Bernoulli and
      Categorical sites use the local form (eq. 34), count sites the closed-form
      variable-nablas of appendix A;
    * for each discrete guide site *with* children in the guide, which Theorem 3 does
      not cover, the score-function term Rao-Blackwellised by provenance like
      :class:`~numpyro.infer.TraceGraph_ELBO`, with a warning; ``strict=True`` raises;
    * for each guide site with no GO rule (a continuous class without a pathwise
      sampler whose ``cdf`` is missing or not differentiable in some parameter, a
      discrete family without a rule), the same Rao-Blackwellised score-function term,
      with one warning naming the site; ``strict=True`` raises instead.  So every guide
      that :class:`~numpyro.infer.TraceGraph_ELBO` trains, this ELBO trains.  A site
      marked ``infer={"go_score_function": True}`` gets this term without a warning:
      GO, like any pathwise gradient, needs ``f`` differentiable in a continuous value,
      which fails where the value decides control flow.

    JAX traces the model and guide, so a discrete value read as Python data (an ``if``
    on it, ``int``, ``range``) cannot be followed: it raises a :class:`ValueError` that
    names the site and the rewrites (``jnp.where``/``jax.lax.cond``, a fixed number of
    sites with :func:`numpyro.handlers.mask`); ``pyro_go.TraceGO_ELBO`` handles such
    programs.

    :param int num_particles: number of particles averaged per estimate.
    :param vectorize_particles: ``jax.vmap`` over particles (``True``), ``jax.lax.map``
        (``False``), or a callable such as ``jax.pmap``.
    :param bool strict: raise instead of warning when a discrete guide site has
        children in the guide or a guide site has no GO rule.
    :param str categorical_form: ``"local"`` (default, ``K − 1`` evaluations per
        element) or ``"raw"`` (Theorem 1, one evaluation per element) for Categorical
        sites; a site may override it with ``infer={"go_categorical_form": ...}``.
    :param chunk_size: at most this many perturbations evaluated at once
        (``jax.lax.map`` batches; bounds memory); ``None`` for all at once; ``"auto"``
        (default) sizes batches to about 2^15 perturbed-value elements, which keeps the
        fused likelihood loops near cache size (5x faster than one batch on the linear
        VAE at batch 100, on one CPU core).
    :param bool stick_the_landing: hold guide parameters fixed inside ``log q`` [2]
        (default ``True``).
    :param bool absorb_linear: when the model passes a perturbed Bernoulli or count value
        straight into :func:`numpyro_go.nn.linear` (or the :func:`numpyro_go.nn.Dense`
        stax layer), compute ``x_0 W + d_e W[i_e]`` instead of a product per
        perturbation (appendix I's trick; :mod:`numpyro_go.nn`).  Same gradients up to
        float rounding; ``False`` turns it off.

    **References**

    [1] Yulai Cong, Miaoyun Zhao, Ke Bai, Lawrence Carin (2019).
        *GO Gradient for Expectation-Based Objectives.* ICLR 2019.

    [2] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017).
        *Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference.* NeurIPS.
    """

    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        strict: bool = False,
        categorical_form: CategoricalForm = "local",
        chunk_size: int | Literal["auto"] | None = "auto",
        stick_the_landing: bool = True,
        absorb_linear: bool = True,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        if categorical_form not in ("local", "raw"):
            raise ValueError(f"categorical_form must be 'local' or 'raw', got {categorical_form!r}")
        if not (chunk_size in (None, "auto") or (isinstance(chunk_size, int) and chunk_size > 0)):
            raise ValueError(
                f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}"
            )
        self.strict = strict
        self.categorical_form = categorical_form
        self.chunk_size = chunk_size
        self.stick_the_landing = stick_the_landing
        self.absorb_linear = absorb_linear
        self._warned_sites: set[str] = set()
        #: model evaluations per particle spent on ``D_y f`` in the last traced estimate
        #: (perturbations + one base evaluation per leaf site); set when the loss is traced
        self.last_num_evaluations = 0

    def loss_with_mutable_state(
        self, rng_key, param_map: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict:
        """
        :returns: ``{"loss": surrogate, "mutable_state": ...}``: the surrogate's value is
            the negative ELBO estimate and its gradient the GO gradient estimate.
        """

        self.last_num_evaluations = 0

        def single_particle_elbo(key):
            return self._single_particle_elbo(key, param_map, model, guide, args, kwargs)

        if self.num_particles == 1:
            elbo, mutable_state = single_particle_elbo(rng_key)
            return {"loss": -elbo, "mutable_state": mutable_state}
        keys = random.split(rng_key, self.num_particles)
        elbos, mutable_state = self.vectorize_particles_fn(single_particle_elbo, keys)
        if mutable_state:
            warnings.warn("mutable state is ignored when num_particles > 1.", stacklevel=2)
        return {"loss": -jnp.mean(elbos), "mutable_state": None}

    # ------------------------------------------------------------------ one particle

    def _single_particle_elbo(self, key, param_map, model, guide, args, kwargs):
        model_seed, guide_seed = random.split(key)
        tracer = trace(seed(substitute(guide, data=param_map), guide_seed))
        sampler = go_sample(categorical_form=self.categorical_form)
        try:
            with sampler:
                guide_trace = tracer.get_trace(*args, **kwargs)
        except CONCRETIZATION_ERRORS as error:
            sampled = self._discrete_sites(getattr(tracer, "trace", None) or {})
            raise control_flow_error("TraceGO_ELBO", sampled, error) from error
        scored = sampler.score_function_sites
        for name, reason in scored.items():
            if reason is not None:
                self._handle_score_function_site(name, guide_trace[name]["fn"], reason)
        discrete = {n: r for n, r in self._discrete_sites(guide_trace).items() if n not in scored}
        try:
            model_trace = replayed_model_trace(
                model, model_seed, guide_trace, param_map, args, kwargs
            )
        except CONCRETIZATION_ERRORS as error:
            raise control_flow_error("TraceGO_ELBO", discrete, error) from error

        elbo = jnp.zeros(())
        for site in sample_sites(model_trace).values():
            elbo = elbo + jnp.sum(log_prob(site))
        for name, site in latent_sites(guide_trace).items():
            if name in discrete or name in scored:
                elbo = elbo - stop_gradient(jnp.sum(log_prob(site)))
            else:
                elbo = elbo - self._guide_term(site)

        if discrete or scored:
            latents = {name: site["value"] for name, site in latent_sites(guide_trace).items()}
            model_deps, guide_deps = self._dependencies(
                model, guide, args, kwargs, param_map, latents, discrete, scored.keys()
            )
            internal = self._internal_sites(guide_trace, discrete, guide_deps)
            leaves = {name: rule for name, rule in discrete.items() if name not in internal}
            gradient_only = jnp.zeros(())
            if leaves:
                replay_ = self._replay(
                    model, model_seed, param_map, guide_trace, model_trace, args, kwargs
                )
                gradient_only = gradient_only + self._go_terms(
                    replay_, guide_trace, model_trace, leaves, model_deps
                )
            if internal or scored:
                gradient_only = gradient_only + self._score_terms(
                    guide_trace, model_trace, [*internal, *scored], model_deps, guide_deps
                )
            elbo = elbo + gradient_only - stop_gradient(gradient_only)

        mutable_state = {
            name: site["value"]
            for tr in (guide_trace, model_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }
        return elbo, mutable_state or None

    @staticmethod
    def _dependencies(model, guide, args, kwargs, param_map, latents, discrete, scored):
        """The provenance of every model and guide term (:func:`score_function_deps`:
        NumPyro's ``get_nonreparam_deps``, also tracking the ``scored`` sites).  It traces
        both programs with abstract latent values: a read of one as Python data raises,
        with an error that names the site (found by tracing with only that site
        abstract)."""
        try:
            return score_function_deps(model, guide, args, kwargs, param_map, latents, scored)
        except CONCRETIZATION_ERRORS as error:
            read = []
            for name in discrete:
                try:
                    score_function_deps(
                        model, guide, args, kwargs, param_map, {name: latents[name]}, scored
                    )
                except CONCRETIZATION_ERRORS:
                    read.append(name)
                except Exception:  # noqa: BLE001 - only narrowing the error message
                    pass
            raise control_flow_error("TraceGO_ELBO", read or list(discrete), error) from error

    def _guide_term(self, site: dict) -> jax.Array:
        """``log q`` of a continuous site, with its parameters held fixed if sticking."""
        log_q = jnp.sum(log_prob(site))
        if not self.stick_the_landing:
            return log_q
        log_q_params = jnp.sum(log_prob(site, stop_gradient(site["value"])))
        return log_q - log_q_params + stop_gradient(log_q_params)

    def _discrete_sites(self, guide_trace: dict) -> dict:
        discrete = {}
        for name, site in latent_sites(guide_trace).items():
            form = site["infer"].get("go_categorical_form", self.categorical_form)
            rule = get_go_rule(site["fn"], form)
            if rule is not None and rule.kind == "discrete":
                discrete[name] = rule
        return discrete

    def _internal_sites(self, guide_trace, discrete, guide_deps) -> dict[str, list[str]]:
        """Discrete sites with children in the guide: name -> names of the children."""
        children: dict[str, list[str]] = {}
        for name in latent_sites(guide_trace):
            for parent in guide_deps[name] & discrete.keys():
                if parent != name:
                    children.setdefault(parent, []).append(name)
        for name, kids in children.items():
            message = (
                f"TraceGO_ELBO: discrete guide site '{name}' has children in the guide "
                f"({', '.join(kids)}), which statistical back-propagation (GO paper, "
                "Theorem 3) does not cover. Restructure the guide so that discrete sites "
                "are leaves (GO paper, appendix B.4: e.g. condition the children on "
                "continuous variables instead)"
            )
            self._fall_back_to_score_function(name, message)
        return children

    def _handle_score_function_site(self, name: str, fn, reason: str) -> None:
        message = (
            f"TraceGO_ELBO: guide site '{name}' has distribution "
            f"{type(unwrap_distribution(fn)).__name__}, which has no GO gradient here "
            f"({reason}). For GO, give it a pathwise sampler or a cdf differentiable in "
            "every parameter, or register a rule with "
            "numpyro_go.register_go_rule(YourClass, rule)"
        )
        self._fall_back_to_score_function(name, message)

    def _fall_back_to_score_function(self, name: str, message: str) -> None:
        """Raise (``strict``) or warn once per site that ``name`` gets the score function."""
        if self.strict:
            raise ValueError(
                message + ", or construct TraceGO_ELBO(strict=False) to fall back to the "
                "score-function estimator for this site."
            )
        if name not in self._warned_sites:
            self._warned_sites.add(name)
            warnings.warn(
                message + ". Until then its gradient uses the score-function estimator, "
                "Rao-Blackwellised like TraceGraph_ELBO; pass strict=True to make this an "
                "error.",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ GO terms

    def _replay(self, model, model_seed, param_map, guide_trace, model_trace, args, kwargs):
        """A replay of ``model`` with every plate subsample, parameter and latent value
        fixed at this particle's (gradients stopped)."""
        data = {
            name: site["value"] for name, site in model_trace.items() if site["type"] == "plate"
        }
        data.update(param_map)
        for trace_ in (model_trace, guide_trace):
            for name, site in latent_sites(trace_).items():
                data[name] = site["value"]
        data = jax.tree.map(stop_gradient, data)
        return PerturbationReplay(
            model, model_seed, data, args, kwargs, self.chunk_size, self.absorb_linear
        )

    def _go_terms(self, replay_, guide_trace, model_trace, leaves, model_deps) -> jax.Array:
        dependents = {
            name: frozenset(deps & leaves.keys())
            for name, deps in model_deps.items()
            if deps & leaves.keys() and model_trace.get(name, {}).get("type") == "sample"
        }
        total = jnp.zeros(())
        for name, rule in leaves.items():
            site = guide_trace[name]
            consumers = [model_trace[other] for other, deps in dependents.items() if name in deps]
            kept = frozenset(
                frame.dim
                for frame in site["cond_indep_stack"]
                if all(frame.name in frame_names(consumer) for consumer in consumers)
            )
            layout = LeafLayout(name, rule, site["fn"], site["value"], site["scale"], kept)
            self.last_num_evaluations += 1 + layout.num_entries
            try:
                delta = replay_.delta(layout, dependents)
            except CONCRETIZATION_ERRORS as error:
                raise control_flow_error("TraceGO_ELBO", [name], error) from error
            with naming_count_site(f"TraceGO_ELBO: guide site '{name}'"):
                total = total + rule.surrogate(layout.base_fn, site["value"], delta)
        return total

    @staticmethod
    def _score_terms(guide_trace, model_trace, internal, model_deps, guide_deps) -> jax.Array:
        """Score-function terms of the named guide sites (discrete internal sites and
        sites without a GO rule), Rao-Blackwellised by provenance (as
        :class:`~numpyro.infer.TraceGraph_ELBO`)."""
        surrogate = jnp.zeros(())
        guide_sites = latent_sites(guide_trace)
        for name in internal:
            cost = MultiFrameTensor()
            for other, site in sample_sites(model_trace).items():
                if name in model_deps[other]:
                    cost.add((site["cond_indep_stack"], stop_gradient(log_prob(site))))
            for other, site in guide_sites.items():
                if name in guide_deps[other]:
                    cost.add((site["cond_indep_stack"], -stop_gradient(log_prob(site))))
            site = guide_sites[name]
            downstream_cost = cost.sum_to(site["cond_indep_stack"])
            # the costs carry the plates' scales already: an unscaled score (as Pyro's
            # ScoreParts) keeps a subsample's scale from counting twice
            score = log_prob(site, scaled=False)
            surrogate = surrogate + jnp.sum(score * stop_gradient(downstream_cost))
        return surrogate
