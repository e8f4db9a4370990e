"""Small helpers over NumPyro traces shared by the ELBOs of :mod:`numpyro_go.infer` (the
twin of :mod:`pyro_go.infer.trace_utils`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.util import _validate_model, check_model_guide_match

from numpyro_go.handlers import refuse_model_enumeration
from numpyro_go.infer.non_finite import check_observations


def sample_sites(trace_: dict) -> dict:
    """The trace's sample sites, by name."""
    return {name: site for name, site in trace_.items() if site["type"] == "sample"}


def latent_sites(trace_: dict) -> dict:
    """The trace's unobserved sample sites, by name."""
    return {name: site for name, site in sample_sites(trace_).items() if not site["is_observed"]}


def log_prob(site: dict, value=None) -> jax.Array:
    """Scaled ``log_prob`` of a sample site (at ``value`` if given)."""
    value = site["value"] if value is None else value
    if site["intermediates"] and value is site["value"]:
        result = site["fn"].log_prob(value, site["intermediates"])
    else:
        result = site["fn"].log_prob(value)
    if site["scale"] is not None:
        result = site["scale"] * result
    return result


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
