"""Small helpers over NumPyro traces shared by the ELBOs of :mod:`numpyro_go.infer` (the
twin of :mod:`pyro_go.infer.trace_utils`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import get_importance_log_probs
from numpyro.ops.provenance import eval_provenance
from numpyro.util import _validate_model, check_model_guide_match

from numpyro_go.handlers import refuse_model_enumeration
from numpyro_go.infer.non_finite import check_observations


def sample_sites(trace_: dict) -> dict:
    """The trace's sample sites, by name."""
    return {name: site for name, site in trace_.items() if site["type"] == "sample"}


def latent_sites(trace_: dict) -> dict:
    """The trace's unobserved sample sites, by name."""
    return {name: site for name, site in sample_sites(trace_).items() if not site["is_observed"]}


def log_prob(site: dict, value=None, scaled: bool = True) -> jax.Array:
    """``log_prob`` of a sample site (at ``value`` if given), times the site's scale
    unless ``scaled=False`` (a score function's ``log q``: the scale belongs to the
    costs it multiplies, as in Pyro's ``ScoreParts``)."""
    value = site["value"] if value is None else value
    if site["intermediates"] and value is site["value"]:
        result = site["fn"].log_prob(value, site["intermediates"])
    else:
        result = site["fn"].log_prob(value)
    if scaled and site["scale"] is not None:
        result = site["scale"] * result
    return result


#: what JAX raises when a traced value is read as Python data
CONCRETIZATION_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def control_flow_error(elbo: str, sites, error: Exception) -> ValueError:
    """The error for a program that reads the value of one of the discrete ``sites`` as
    Python data, which JAX cannot trace: it names the sites and the ways out."""
    names = ", ".join(f"'{name}'" for name in sites)
    if len(sites) != 1:
        names = f"sites {names} (one of them)" if sites else "sites (none sampled yet)"
    else:
        names = f"site {names}"
    return ValueError(
        f"{elbo}: the model or guide reads the value of the discrete latent {names} "
        "as Python data (an if, bool, int, float, range or .item() on it). JAX traces "
        "the model and guide (under jit, to find which terms depend on which site, and "
        "to vmap the perturbations), so latent values are not Python numbers there. "
        "Write the branch with jnp.where or jax.lax.cond, and a count that sets how many "
        "sites follow as a fixed maximum number of sites masked with "
        "numpyro.handlers.mask; or use pyro_go.TraceGO_ELBO (PyTorch), which replays "
        f"such programs one perturbation at a time. Original error: {error}"
    )


def frame_names(site: dict) -> set[str]:
    """Names of the plates a site lies in."""
    return {frame.name for frame in site["cond_indep_stack"]}


def replayed_model_trace(
    model: Callable,
    model_seed,
    guide_trace: dict,
    param_map: dict,
    args,
    kwargs,
    elbo: str = "TraceGO_ELBO",
) -> dict:
    """The model's trace with the guide's values, checked against the guide the way
    NumPyro's ``Trace_ELBO`` checks it; raises a :class:`ValueError` naming the site (in
    the words of ``elbo``) for enumerated model sites without a guide site and for
    non-finite observed data (where it is known at trace time)."""
    model_trace = trace(
        substitute(replay(seed(model, model_seed), guide_trace), data=param_map)
    ).get_trace(*args, **kwargs)
    refuse_model_enumeration(model_trace, guide_trace, elbo)
    check_observations(model_trace, elbo)
    check_model_guide_match(model_trace, guide_trace)
    _validate_model(model_trace, plate_warning="loose")
    return model_trace


def score_function_deps(
    model: Callable, guide: Callable, args, kwargs, param_map: dict, latents: dict, also
) -> tuple[dict, dict]:
    """:func:`numpyro.infer.elbo.get_nonreparam_deps` (for each model and guide term, the
    sites without a pathwise sampler it depends on), also tracking the sites named in
    ``also``: sites that have a pathwise sampler but are given the score function."""

    def substitute_tracked(values: dict, msg) -> jax.Array | None:
        name = msg["name"]
        if name in values and (name in also or not msg["fn"].has_rsample):
            return 0 * msg["fn"](*msg["args"], **msg["kwargs"]) + values[name]
        return None

    def log_probs(**values):
        def tracked(fn):
            return substitute(
                seed(fn, rng_seed=0), substitute_fn=lambda m: substitute_tracked(values, m)
            )

        return get_importance_log_probs(tracked(model), tracked(guide), args, kwargs, param_map)

    return eval_provenance(log_probs, **latents)
