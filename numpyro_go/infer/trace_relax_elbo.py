"""``TraceRELAX_ELBO`` for NumPyro: the ELBO with RELAX / REBAR gradients on the logits of
Bernoulli and Categorical guide sites, ``jit``-able end to end (the NumPyro twin of
:class:`pyro_go.infer.TraceRELAX_ELBO`; both follow the same specification and give the
same numbers for the same noise and parameters)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import random
from jax.lax import stop_gradient
from numpyro.distributions.distribution import validation_enabled
from numpyro.handlers import block, replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO, get_nonreparam_deps
from numpyro.primitives import Messenger

from numpyro_go.distributions.registry import unwrap_distribution
from numpyro_go.handlers import refuse_enumeration
from numpyro_go.infer.control_variates import RELAX, ControlVariate, RelaxSite
from numpyro_go.infer.perturbation import _sum_to_kept
from numpyro_go.infer.trace_utils import (
    frame_names,
    latent_sites,
    log_prob,
    replayed_model_trace,
    sample_sites,
)
from numpyro_go.ops.relaxation import (
    bernoulli_conditional_z,
    bernoulli_score,
    categorical_conditional_z,
    categorical_score,
    gumbel_z,
    logistic_z,
    uniform_noise,
)

#: logits are clamped to this range (sigmoid / softmax overflow at the boundaries)
LOGIT_CLAMP = 30.0

_WRAPPED = "_numpyro_go_relax_wrapped_guide"


# --------------------------------------------------------------------------- sites


def _is_one_hot_multinomial(base) -> bool:
    if not isinstance(base, (dist.MultinomialLogits, dist.MultinomialProbs)):
        return False
    total_count = base.total_count
    if isinstance(total_count, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(total_count) == 1))


def relax_kind(fn) -> str | None:
    """``"bernoulli"``, ``"categorical"`` (index) or ``"one_hot"`` for a (possibly
    wrapped) distribution that RELAX covers, else ``None``.  NumPyro has no
    ``OneHotCategorical``; its one-hot categorical is ``Multinomial(total_count=1)``."""
    base = unwrap_distribution(fn)
    if isinstance(base, (dist.BernoulliLogits, dist.BernoulliProbs)):
        return "bernoulli"
    if isinstance(base, (dist.CategoricalLogits, dist.CategoricalProbs)):
        return "categorical"
    if _is_one_hot_multinomial(base):
        return "one_hot"
    return None


def _noise_shape(fn, kind: str) -> tuple[int, ...]:
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if kind == "categorical":
        shape = shape + (unwrap_distribution(fn).logits.shape[-1],)
    return shape


def _site_logits(fn, kind: str) -> jax.Array:
    """The site's logits, broadcast to its noise shape and clamped to ±30."""
    logits = unwrap_distribution(fn).logits
    logits = jnp.broadcast_to(logits, _noise_shape(fn, kind))
    return jnp.clip(logits, -LOGIT_CLAMP, LOGIT_CLAMP)


def _layout(name: str, site: dict, kind: str, kept_dims: frozenset[int]) -> RelaxSite:
    fn = site["fn"]
    return RelaxSite(
        name=name,
        kind=kind,
        noise_shape=_noise_shape(fn, kind),
        batch_shape=tuple(fn.batch_shape),
        kept_dims=frozenset(kept_dims),
        dtype=jnp.asarray(unwrap_distribution(fn).logits).dtype,
    )


def _plate_dims(site: dict) -> frozenset[int]:
    ndim = len(site["fn"].batch_shape)
    return frozenset(f.dim for f in site["cond_indep_stack"] if -ndim <= f.dim)


def _slice_dims(site: dict, consumers: list[dict]) -> frozenset[int]:
    """The plate dims of ``site`` in which every consumer (a model term that depends on
    the site) also lies; the others are coupled (TraceGO_ELBO's rule)."""
    ndim = len(site["fn"].batch_shape)
    return frozenset(
        frame.dim
        for frame in site["cond_indep_stack"]
        if -ndim <= frame.dim and all(frame.name in frame_names(consumer) for consumer in consumers)
    )


def _consumers(name: str, model_trace: dict, model_deps: dict) -> list[str]:
    return [
        other
        for other, deps in model_deps.items()
        if name in deps and model_trace.get(other, {}).get("type") == "sample"
    ]


def _unsupported(name: str, fn) -> ValueError:
    base = unwrap_distribution(fn)
    extra = ""
    if isinstance(base, (dist.MultinomialLogits, dist.MultinomialProbs)):
        extra = " (a Multinomial counts as one-hot only with total_count the integer 1)"
    return ValueError(
        f"TraceRELAX_ELBO: guide site '{name}' has distribution {type(base).__name__}"
        f"{extra}, which RELAX does not cover: it estimates gradients on the logits of "
        "Bernoulli, Categorical and one-hot Multinomial(total_count=1) sites, and uses "
        "pathwise gradients for continuous sites with a reparameterised sampler. Use "
        "numpyro_go.TraceGO_ELBO for this model."
    )


def _check_relaxable(layout: RelaxSite, control_variate: ControlVariate) -> None:
    if control_variate.needs_relaxed_value and layout.kind == "categorical":
        layout.relax(None, None)  # raises the explanatory error


def _relaxed_log_q(fn, kind: str, logits: jax.Array, value: jax.Array) -> jax.Array:
    """``log q_s(value)`` as a function of the logits (spec: ``value·l − softplus(l)``,
    ``Σ value · log_softmax(l)``), through the site's Independent / mask wrappers;
    shape: the site's batch shape (unscaled)."""
    if kind == "bernoulli":
        log_q = value * logits - jax.nn.softplus(logits)
    elif kind == "one_hot":
        log_q = jnp.sum(value * jax.nn.log_softmax(logits, -1), -1)
    else:
        index = jnp.asarray(value, jnp.int32)[..., None]
        log_q = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), index, -1)[..., 0]
    wrappers = []
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        wrappers.append(fn)
        fn = fn.base_dist
    for wrapper in reversed(wrappers):
        if isinstance(wrapper, dist.Independent):
            n = wrapper.reinterpreted_batch_ndims
            log_q = jnp.sum(log_q, axis=tuple(range(-n, 0))) if n else log_q
        elif isinstance(wrapper, dist.MaskedDistribution):
            mask = wrapper._mask
            if mask is False:
                log_q = jnp.zeros_like(log_q)
            elif mask is not True:
                log_q = jnp.where(mask, log_q, 0.0)
    return log_q


def _relaxed_model_log_prob(fn, value: jax.Array) -> jax.Array:
    """The model's own density of a RELAX site at a relaxed value: ``fn.log_prob`` (linear
    in the value for Bernoulli), except that a one-hot site's is ``Σ value · log π``
    (the continuation Pyro uses, since torch's ``OneHotCategorical.log_prob`` takes an
    ``argmax``; NumPyro's ``Multinomial`` would add ``−Σ log Γ(value + 1)``)."""
    if relax_kind(fn) == "one_hot":
        logits = jnp.broadcast_to(unwrap_distribution(fn).logits, jnp.shape(value))
        return _relaxed_log_q(fn, "one_hot", logits, value)
    return fn.log_prob(value)


def _scaled(site: dict, log_prob: jax.Array) -> jax.Array:
    return log_prob if site["scale"] is None else site["scale"] * log_prob


class _relax_sample(Messenger):
    """Samples each RELAX site of the guide as ``b = H(z(l, u))`` from uniform noise
    ``u`` (kept, with the conditional noise ``v``, in :attr:`noise`), so that ``b`` and
    ``z`` are coupled as the estimator needs; checks every other latent site.

    Enter it *outside* :class:`numpyro.handlers.trace` (NumPyro runs
    ``postprocess_message`` from the outermost handler inward)."""

    def __init__(self, fn=None, rng_key=None) -> None:
        self.rng_key = rng_key
        self.noise: dict[str, tuple[jax.Array, jax.Array]] = {}
        self.kinds: dict[str, str] = {}
        super().__init__(fn)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name, fn = msg["name"], msg["fn"]
        refuse_enumeration(msg, "TraceRELAX_ELBO")
        kind = relax_kind(fn)
        if kind is None:
            if fn.has_rsample:
                return
            raise _unsupported(name, fn)
        logits = stop_gradient(_site_logits(fn, kind))
        shape, dtype = logits.shape, logits.dtype
        noise = msg["infer"].get("relax_noise")
        if noise is None:
            key_u, key_v = random.split(random.fold_in(self.rng_key, len(self.noise)))
            u, v = uniform_noise(key_u, shape, dtype), uniform_noise(key_v, shape, dtype)
        else:
            u, v = (jnp.broadcast_to(jnp.asarray(x, dtype), shape) for x in noise)
        if kind == "bernoulli":
            value = logistic_z(logits, u) > 0
        else:
            value = jnp.argmax(gumbel_z(logits, u), -1)
            if kind == "one_hot":
                value = jax.nn.one_hot(value, shape[-1])
        msg["value"] = stop_gradient(value.astype(jnp.result_type(msg["value"])))
        self.noise[name] = (u, v)
        self.kinds[name] = kind


# --------------------------------------------------------------------------- the ELBO


class TraceRELAX_ELBO(ELBO):
    r"""
    An ELBO whose gradient on the logits of each Bernoulli or Categorical guide site is
    the RELAX estimator [1] — with the control variate of REBAR [2], of RELAX, or a
    learned baseline — and whose control-variate parameters are trained, by the same
    ``svi.update``, to minimise that estimator's variance.  A drop-in ``loss=`` for
    :class:`numpyro.infer.SVI`, ``jax.jit``-compiled end to end.

    For a RELAX site ``s`` with logits ``l``, uniform noise ``u, v``, ``z = z(l, u)``
    (logistic, RELAX eq. 3, or Gumbel), ``b = H(z)`` the sample and ``z̃ ~ p(z | b)``
    REBAR's conditional sample, the estimator of ``∂/∂l E[f]`` is (eqs. 8–9)

    .. math::

        \hat g_s = [f_s(b) − c(\tilde z)]\, ∂_l \log q(b) + ∂_l c(z) − ∂_l c(\tilde z),

    where ``f_s = log q_s − Σ log p`` over the model terms that depend on ``s`` (by
    provenance), summed per *slice* (the plates of ``s`` in which all those terms lie,
    like :class:`~numpyro_go.TraceGO_ELBO`'s plate batching), and ``c`` is a cost of
    slice shape (:mod:`numpyro_go.infer.control_variates`): ``REBAR`` (``η f_s`` at the
    Concrete relaxation ``σ_λ(ζ)``), ``RELAX`` (a network ``r_ψ(ζ)``, plus REBAR's term
    with ``rebar=True``) or ``Baseline``.  ``ĝ_s`` is back-propagated into ``l`` and
    through it into the guide's parameters; continuous guide sites get their pathwise
    gradient with "sticking the landing" [3]; model parameters the gradient of
    ``log p`` at the sample.  The control-variate parameters ``ψ, η, λ`` get
    ``∂/∂ψ Σ_s Σ ĝ_s²`` (eq. 10, by double differentiation), a single-sample estimate
    of the variance plus the squared mean, which does not depend on ``ψ``.  The loss'
    value is the usual negative ELBO estimate.

    **Departure from Pyro: wrap the guide.**  NumPyro's :class:`~numpyro.infer.SVI`
    collects parameters only from the model and guide traces (Pyro's param store has no
    NumPyro counterpart), so the control-variate parameters must be declared by the
    guide.  :meth:`wrap_guide` returns a guide that runs yours and then declares, for each
    RELAX site, its control-variate parameters with :func:`numpyro.param` /
    :func:`numpyro.module` (shapes from the site)::

        elbo = TraceRELAX_ELBO()
        svi = SVI(model, elbo.wrap_guide(guide), optax.adam(1e-3), elbo)

    The loss reads their current values from the wrapped guide's trace and raises a
    ``ValueError`` saying so when they are missing.  The control-variate parameters are
    ordinary params of ``svi.get_params(state)``; the RELAX paper trains them with a
    larger learning rate than the model's (e.g. :func:`optax.multi_transform` on the
    names containing ``".relax_"``).

    **Resuming.**  The control-variate parameters are ordinary params of the
    ``svi_state``: a pickled ``svi_state`` (optimizer moments and key included), continued
    by a new ``SVI`` with a new ``TraceRELAX_ELBO`` (after its ``svi.init``, which sets up
    ``svi.get_params``), takes exactly the steps of the uninterrupted run;
    ``svi.init(key, ..., init_params=svi.get_params(state))`` restores every parameter,
    the control variate's included, but restarts the optimizer's moments.

    Non-finite observed data known when the loss is traced, and latent model sites
    without a guide site that ask for enumeration, raise a ``ValueError`` naming the
    site; for a non-finite loss under ``jit`` use
    :func:`~numpyro_go.infer.run_checked` / :func:`~numpyro_go.infer.update_checked`.

    Guide sites may carry fixed noise for tests, ``infer={"relax_noise": (u, v)}`` (each
    of the site's logits shape, ``+ (K,)`` for an index Categorical).  NumPyro has no
    ``OneHotCategorical``: a one-hot site is ``dist.Multinomial(total_count=1, ...)``.
    Guide sites that are neither RELAX sites nor reparameterisable (e.g. Poisson), RELAX
    sites with children in the guide and enumerated sites raise a ``ValueError`` naming
    the site.

    :param ControlVariate control_variate: ``REBAR()``, ``RELAX(...)`` or ``Baseline()``;
        default ``RELAX(rebar=True)`` ("relaxed REBAR", the RELAX paper's choice for its
        discrete VAEs).
    :param int num_particles: number of particles averaged per estimate.
    :param vectorize_particles: ``jax.vmap`` over particles (``True``), ``jax.lax.map``
        (``False``), or a callable such as ``jax.pmap``.

    **References**

    [1] Will Grathwohl, Dami Choi, Yuhuai Wu, Geoffrey Roeder, David Duvenaud (2018).
        *Backpropagation through the Void: Optimizing Control Variates for Black-Box
        Gradient Estimation.* ICLR 2018.

    [2] George Tucker, Andriy Mnih, Chris J. Maddison, Dieterich Lawson, Jascha
        Sohl-Dickstein (2017). *REBAR: Low-Variance, Unbiased Gradient Estimates for
        Discrete Latent Variable Models.* NeurIPS 2017.

    [3] Geoffrey Roeder, Yuhuai Wu, David Duvenaud (2017).
        *Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference.* NeurIPS.
    """

    can_infer_discrete = True

    def __init__(
        self,
        control_variate: ControlVariate | None = None,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        if control_variate is None:
            control_variate = RELAX(rebar=True)
        if not isinstance(control_variate, ControlVariate):
            raise TypeError(
                "control_variate must be a numpyro_go ControlVariate (REBAR(), RELAX(...) "
                f"or Baseline()), got {control_variate!r}"
            )
        self.control_variate = control_variate

    # ------------------------------------------------------------------ the guide

    def wrap_guide(self, guide: Callable, model: Callable | None = None) -> Callable:
        """A guide that runs ``guide`` and then declares the control-variate parameters
        of each of its RELAX sites (see the class docstring); pass it to ``SVI``.

        :param guide: the guide.
        :param model: optional; only needed when a RELAX control variate's network must
            see coupled plates, i.e. when a model term that depends on a RELAX site lies
            outside one of the site's plates.  Without it every plate of a site is
            assumed to be a slice dim when the network is initialised (the loss raises
            if that was wrong).
        """
        control_variate = self.control_variate

        @functools.wraps(guide)
        def wrapped_guide(*args, **kwargs):
            with trace() as inner:
                result = guide(*args, **kwargs)
            sites = {}
            for name, site in latent_sites(inner).items():
                kind = relax_kind(site["fn"])
                if kind is not None:
                    sites[name] = (site, kind)
            slice_dims = {name: _plate_dims(site) for name, (site, _) in sites.items()}
            if model is not None and control_variate.shapes_depend_on_slices:
                layouts = {n: _layout(n, s, k, slice_dims[n]) for n, (s, k) in sites.items()}
                if any(_param_missing(control_variate, lay) for lay in layouts.values()):
                    slice_dims = _model_slice_dims(model, guide, args, kwargs, list(sites))
            for name, (site, kind) in sites.items():
                layout = _layout(name, site, kind, slice_dims[name])
                _check_relaxable(layout, control_variate)
                control_variate.declare(layout, args, kwargs)
            return result

        setattr(wrapped_guide, _WRAPPED, guide)
        return wrapped_guide

    # ------------------------------------------------------------------ the loss

    def loss_with_mutable_state(
        self, rng_key, param_map: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict:
        """
        :returns: ``{"loss": surrogate, "mutable_state": ...}``: the surrogate's value is
            the negative ELBO estimate, its gradient the RELAX estimate for the guide and
            model parameters and ``∂ Σ V_s / ∂ψ`` for the control-variate parameters.
        """

        def single_particle(key):
            loss, mutable_state, _ = self._single_particle(
                key, param_map, model, guide, args, kwargs
            )
            return loss, mutable_state

        if self.num_particles == 1:
            loss, mutable_state = single_particle(rng_key)
            return {"loss": loss, "mutable_state": mutable_state}
        keys = random.split(rng_key, self.num_particles)
        losses, mutable_state = self.vectorize_particles_fn(single_particle, keys)
        if mutable_state:
            warnings.warn("mutable state is ignored when num_particles > 1.", stacklevel=2)
        return {"loss": jnp.mean(losses), "mutable_state": None}

    def gradient_variance(
        self, rng_key, params: dict, model: Callable, guide: Callable, *args, **kwargs
    ) -> dict[str, jax.Array]:
        """The variance objective ``V_s = Σ ĝ_s²`` of each RELAX site (eq. 10; averaged
        over particles), at the constrained ``params`` (as ``svi.get_params`` returns
        them).  Pure and ``jit``-able: ``jax.vmap`` it over keys to measure the mean.
        Differentiable in the control-variate parameters only (its gradient is the one
        the loss gives them)."""

        def single_particle(key):
            return self._single_particle(key, params, model, guide, args, kwargs)[2]

        if self.num_particles == 1:
            variances = single_particle(rng_key)
        else:
            keys = random.split(rng_key, self.num_particles)
            variances = jax.tree.map(
                lambda x: jnp.mean(x, 0), self.vectorize_particles_fn(single_particle, keys)
            )
        return variances

    # ------------------------------------------------------------------ one particle

    def _single_particle(self, key, param_map, model, guide, args, kwargs):
        model_seed, guide_seed, noise_key = random.split(key, 3)
        sampler = _relax_sample(rng_key=noise_key)
        with sampler:
            guide_trace = trace(seed(substitute(guide, data=param_map), guide_seed)).get_trace(
                *args, **kwargs
            )
        model_trace = replayed_model_trace(
            model, model_seed, guide_trace, param_map, args, kwargs, "TraceRELAX_ELBO"
        )

        relax_sites = sampler.kinds
        elbo = jnp.zeros(())
        surrogate_elbo = jnp.zeros(())
        for site in sample_sites(model_trace).values():
            log_p = jnp.sum(log_prob(site))
            elbo, surrogate_elbo = elbo + log_p, surrogate_elbo + log_p
        for name, site in latent_sites(guide_trace).items():
            log_q = jnp.sum(log_prob(site))
            elbo = elbo - log_q
            if name in relax_sites:
                surrogate_elbo = surrogate_elbo - stop_gradient(log_q)
            else:  # sticking the landing: guide parameters fixed inside log q
                log_q_params = jnp.sum(log_prob(site, stop_gradient(site["value"])))
                log_q = log_q - log_q_params + stop_gradient(log_q_params)
                surrogate_elbo = surrogate_elbo - log_q

        gradient_terms = jnp.zeros(())
        variances = {}
        if relax_sites:
            latents = {name: site["value"] for name, site in latent_sites(guide_trace).items()}
            model_deps, guide_deps = get_nonreparam_deps(
                model, guide, args, kwargs, param_map, latents=latents
            )
            self._check_leaves(guide_trace, relax_sites, guide_deps)
            data = _replay_data(param_map, model_trace, guide_trace)
            replay_ = _replay(model, model_seed, data, args, kwargs)
            for name, kind in relax_sites.items():
                g, logits, variance = self._site_estimate(
                    name, kind, guide, guide_trace, model_trace, model_deps,
                    sampler.noise[name], replay_, param_map, args, kwargs,
                )  # fmt: skip
                variances[name] = variance
                gradient_terms = gradient_terms + jnp.sum(stop_gradient(g) * logits) + variance
        surrogate = -surrogate_elbo + gradient_terms
        loss = stop_gradient(-elbo) + surrogate - stop_gradient(surrogate)

        mutable_state = {
            name: site["value"]
            for tr in (guide_trace, model_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }
        return loss, mutable_state or None, variances

    @staticmethod
    def _check_leaves(guide_trace, relax_sites, guide_deps) -> None:
        for name in relax_sites:
            children = [
                other
                for other in latent_sites(guide_trace)
                if other != name and name in guide_deps.get(other, ())
            ]
            if children:
                raise ValueError(
                    f"TraceRELAX_ELBO: guide site '{name}' has children in the guide "
                    f"({', '.join(children)}): the control variate needs the site to be a "
                    "leaf of the guide; numpyro_go.TraceGO_ELBO handles such guides."
                )

    def _control_variate_params(self, layout: RelaxSite, guide, guide_trace, param_map) -> dict:
        names = self.control_variate.param_names(layout)
        missing = [n for n in names if guide_trace.get(n, {}).get("type") != "param"]
        if missing:
            why = (
                "The guide was wrapped by a TraceRELAX_ELBO with another control variate "
                f"than {self.control_variate!r}; wrap it with this one"
                if getattr(guide, _WRAPPED, None) is not None
                else "NumPyro's SVI collects parameters only from the model and guide "
                "traces, so the guide must declare them: wrap it with this ELBO"
            )
            raise ValueError(
                f"TraceRELAX_ELBO: the control-variate parameters of guide site "
                f"'{layout.name}' ({', '.join(missing)}) are not in the guide's trace. "
                f"{why}, SVI(model, elbo.wrap_guide(guide), optim, elbo)."
            )
        missing = [n for n in names if n not in param_map]
        if missing:
            raise ValueError(
                f"TraceRELAX_ELBO: the parameters passed to the loss lack the control-"
                f"variate parameters of guide site '{layout.name}' ({', '.join(missing)}). "
                "Initialise them with SVI(model, elbo.wrap_guide(guide), optim, elbo)"
                ".init(rng_key, ...) and pass svi.get_params(state)."
            )
        return {n: guide_trace[n]["value"] for n in names}

    def _site_estimate(
        self, name, kind, guide, guide_trace, model_trace, model_deps, noise, replay_, param_map,
        args, kwargs,
    ):  # fmt: skip
        """``(ĝ_s, l_s, V_s)`` for one RELAX site."""
        control_variate = self.control_variate
        site = guide_trace[name]
        fn = site["fn"]
        consumers = [model_trace[c] for c in _consumers(name, model_trace, model_deps)]
        layout = _layout(name, site, kind, _slice_dims(site, consumers))
        _check_relaxable(layout, control_variate)
        cv_params = self._control_variate_params(layout, guide, guide_trace, param_map)
        ndim = len(layout.batch_shape)
        kept = layout.kept_dims

        logits = _site_logits(fn, kind)
        logits0 = stop_gradient(logits)
        u, v = noise
        value = stop_gradient(site["value"])
        hard = value.astype(logits.dtype)  # Bernoulli: b; one-hot: onehot(b)
        index = None  # the sampled category of a categorical site
        if kind == "categorical":
            index = value
        elif kind == "one_hot":
            index = jnp.argmax(hard, -1)

        # log q inside the relaxed cost keeps the guide's own (unclamped) logits fixed:
        # c then depends on the leaf logits only through ζ, a valid control variate
        fixed_logits = stop_gradient(
            jnp.broadcast_to(unwrap_distribution(fn).logits, layout.noise_shape)
        )

        def log_q_cost(x):
            log_q = _scaled(site, _relaxed_log_q(fn, kind, fixed_logits, x))
            return _sum_to_kept(log_q, kept, ndim)

        # f_s(b): the cost per slice at the sample (no gradient)
        f = _sum_to_kept(log_prob(site), kept, ndim)
        for consumer in consumers:
            f = f - _sum_to_kept(log_prob(consumer), kept, ndim)
        f = stop_gradient(f)

        def relaxed_cost(x):
            return log_q_cost(x) + replay_(name, x, consumers, kept, ndim)

        def c(zeta):
            return control_variate(cv_params, layout, zeta, relaxed_cost, args, kwargs)

        if kind == "bernoulli":
            score = bernoulli_score(logits0, hard)

            def z_of(logits_):
                return logistic_z(logits_, u)

            def z_tilde_of(logits_):
                return bernoulli_conditional_z(logits_, hard, v)
        else:
            score = categorical_score(logits0, index)

            def z_of(logits_):
                return gumbel_z(logits_, u)

            def z_tilde_of(logits_):
                return categorical_conditional_z(logits_, index, v)

        if control_variate.depends_on_zeta:

            def difference(logits_):
                c_tilde = c(z_tilde_of(logits_))
                return jnp.sum(c(z_of(logits_))) - jnp.sum(c_tilde), c_tilde

            pathwise, c_tilde = jax.grad(difference, has_aux=True)(logits0)
        else:
            pathwise, c_tilde = 0.0, c(None)
        weight = f - c_tilde
        weight = jnp.reshape(weight, weight.shape + (1,) * (len(layout.noise_shape) - ndim))
        g = weight * score + pathwise
        return g, logits, jnp.sum(g**2)


def _param_missing(control_variate: ControlVariate, layout: RelaxSite) -> bool:
    """Whether the site's control-variate params are not yet initialised (``numpyro.param``
    without an initial value returns ``None`` unless a handler substitutes one)."""
    return any(numpyro.param(n) is None for n in control_variate.param_names(layout))


def _model_slice_dims(model, guide, args, kwargs, names) -> dict[str, frozenset[int]]:
    """The slice dims of the guide's RELAX sites ``names`` from one run of model and guide
    (hidden from the handlers around the wrapped guide)."""
    with block():
        key_guide, key_model = random.split(random.PRNGKey(0))
        guide_trace = trace(seed(guide, key_guide)).get_trace(*args, **kwargs)
        model_trace = trace(seed(replay(model, guide_trace), key_model)).get_trace(*args, **kwargs)
        params = {
            name: site["value"]
            for tr in (guide_trace, model_trace)
            for name, site in tr.items()
            if site["type"] == "param"
        }
        latents = {name: site["value"] for name, site in latent_sites(guide_trace).items()}
        model_deps, _ = get_nonreparam_deps(model, guide, args, kwargs, params, latents=latents)
    result = {}
    for name in names:
        consumers = [model_trace[c] for c in _consumers(name, model_trace, model_deps)]
        result[name] = _slice_dims(guide_trace[name], consumers)
    return result


def _replay_data(param_map, model_trace, guide_trace) -> dict:
    """Plate subsamples, parameters and every latent value of this particle, gradients
    stopped: the relaxed replays give no gradient to the model's or guide's params."""
    data = {name: site["value"] for name, site in model_trace.items() if site["type"] == "plate"}
    data.update(param_map)
    for trace_ in (model_trace, guide_trace):
        for name, site in latent_sites(trace_).items():
            data[name] = site["value"]
    return jax.tree.map(stop_gradient, data)


def _replay(model, rng_key, data, args, kwargs):
    """``(name, value, consumers, kept, ndim) ↦ −Σ log p`` of the consumers of site
    ``name`` with its value replaced by ``value`` (validation off: a relaxed value is not
    in the support), summed to the slice dims."""

    def model_cost(name, value, consumers, kept, ndim):
        total = jnp.zeros((1,) * ndim)
        with validation_enabled(False):
            model_trace = trace(
                substitute(seed(model, rng_key), data=dict(data, **{name: value}))
            ).get_trace(*args, **kwargs)
            for consumer in consumers:
                model_site = model_trace[consumer["name"]]
                if consumer["name"] == name:
                    log_p = _scaled(model_site, _relaxed_model_log_prob(model_site["fn"], value))
                else:
                    log_p = log_prob(model_site)
                total = total - _sum_to_kept(log_p, kept, ndim)
        return total

    return model_cost


__all__ = ["TraceRELAX_ELBO", "relax_kind"]
