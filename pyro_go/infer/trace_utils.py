"""Small helpers over Pyro traces shared by the ELBOs of :mod:`pyro_go.infer`."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape

from pyro_go.infer.non_finite import check_observations
from pyro_go.infer.recorded_linear import RecordingTensor
from pyro_go.ops.provenance import ProvenanceTensor, provenance_of, strip
from pyro_go.poutine.enumeration import refuse_model_enumeration
from pyro_go.poutine.scalar_read_messenger import ScalarReadMessenger


def sample_sites(trace) -> dict:
    """The trace's sample sites, by name."""
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}


def latent_sites(trace) -> dict:
    """The trace's unobserved sample sites, by name."""
    return {name: site for name, site in sample_sites(trace).items() if not site["is_observed"]}


def vectorized_frames(site) -> tuple:
    """The vectorised plate frames a site lies in."""
    return tuple(frame for frame in site["cond_indep_stack"] if frame.vectorized)


def plain(value: torch.Tensor) -> torch.Tensor:
    """``value`` without provenance and without gradient."""
    return strip(value).detach()


def coupling_free_frames(name: str, guide_site, model_trace, dependents: dict) -> tuple:
    """The vectorised frames of guide site ``name`` that contain every model term that
    depends on it: slices along these plates can be treated one by one.  A plate is
    *coupled* when a dependent model term lies outside it (the term sees all slices)."""
    return tuple(
        frame
        for frame in vectorized_frames(guide_site)
        if all(
            frame in model_trace.nodes[other]["cond_indep_stack"]
            for other, sources in dependents.items()
            if name in sources
        )
    )


def guide_log_density(site, stick_the_landing: bool) -> torch.Tensor:
    """``log q`` of a continuous guide site, summed; with ``stick_the_landing`` its
    parameters are held fixed (Roeder et al. 2017: the dropped score term has zero mean),
    so only the pathwise dependence through the value remains."""
    log_q = strip(site["log_prob_sum"])
    if not stick_the_landing:
        return log_q
    value = plain(site["value"])
    log_q_params = scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"]).sum()
    return log_q - log_q_params + log_q_params.detach()


class TrackedTraces(NamedTuple):
    """One particle's traces with provenance: ``tracked`` maps each tracked (discrete)
    guide site to its provenance-carrying value; ``guide_trace`` (pruned, log-densities
    computed from provenance-free values, so a site's provenance names the tracked sites
    its *parameters* depend on) and ``model_trace`` (replayed with the tracked values, so
    each term names the tracked sites it depends on).  A site read as Python data before
    a term was sampled counts among the term's provenance (its structure may depend on
    it): ``guide_reads`` and ``model_reads`` name the sites the guide and the model
    read."""

    raw_guide_trace: Trace
    guide_trace: Trace
    model_trace: Trace
    tracked: dict
    guide_reads: frozenset = frozenset()
    model_reads: frozenset = frozenset()


def trace_with_provenance(
    guide,
    model,
    args,
    kwargs,
    max_plate_nesting,
    record_linear: bool = False,
    elbo: str = "TraceGO_ELBO",
) -> TrackedTraces:
    """Runs ``guide`` (already wrapped in a sampling messenger that returns
    :class:`~pyro_go.ops.provenance.ProvenanceTensor` values naming their own site for
    the sites it tracks) and replays ``model`` against it, with Pyro's usual validation,
    and raises a :class:`ValueError` naming the site (in the words of ``elbo``) for
    enumerated model sites without a guide site and for non-finite observed data.
    Continuous guide values computed from tracked ones keep their provenance in the
    model.  With ``record_linear`` the model receives the tracked values as
    :class:`~pyro_go.infer.recorded_linear.RecordingTensor` values, which record the
    linear layers applied to them.  Both programs run under a
    :class:`~pyro_go.poutine.scalar_read_messenger.ScalarReadMessenger`: every term
    sampled after a tracked value was read as Python data depends on it, and the model's
    terms on everything the guide read."""
    guide_reads = ScalarReadMessenger()
    raw_guide_trace = poutine.trace(guide_reads(guide)).get_trace(*args, **kwargs)
    tracked, carried = {}, {}
    for name, node in sample_sites(raw_guide_trace).items():
        value = node["value"]
        if isinstance(value, ProvenanceTensor):
            if name in value._provenance:
                if record_linear:
                    value = RecordingTensor(value._t, value._provenance)
                tracked[name] = value
            carried[name] = value
            node["value"] = value._t
    guide_trace = prune_subsample_sites(raw_guide_trace)
    guide_trace.compute_log_prob()
    guide_reads.mark_structure(guide_trace)

    replay_trace = raw_guide_trace
    if carried:
        replay_trace = raw_guide_trace.copy()
        for name, value in carried.items():
            replay_trace.nodes[name] = dict(raw_guide_trace.nodes[name], value=value)
    model_reads = ScalarReadMessenger(guide_reads.read)
    model_trace = poutine.trace(model_reads(poutine.replay(model, trace=replay_trace))).get_trace(
        *args, **kwargs
    )
    refuse_model_enumeration(model_trace, raw_guide_trace, elbo)
    if is_validation_enabled():
        check_model_guide_match(model_trace, raw_guide_trace, max_plate_nesting)
    check_observations(model_trace, elbo)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    model_reads.mark_structure(model_trace)
    if is_validation_enabled():
        for trace in (model_trace, guide_trace):
            for site in sample_sites(trace).values():
                check_site_shape(site, max_plate_nesting)
    return TrackedTraces(
        raw_guide_trace,
        guide_trace,
        model_trace,
        tracked,
        frozenset(guide_reads.own_reads),
        frozenset(model_reads.own_reads),
    )


def model_dependents(model_trace, names) -> dict[str, frozenset]:
    """Model site name -> the sites among ``names`` its log-density depends on (by
    provenance), for the sites that depend on any."""
    dependents = {}
    for name, site in sample_sites(model_trace).items():
        depends_on = provenance_of(site["log_prob"]) & names
        if depends_on:
            dependents[name] = frozenset(depends_on)
    return dependents


def plain_replay_trace(raw_guide_trace, model_trace) -> Trace:
    """A trace to replay the model against with every value fixed and provenance-free:
    the guide's values, plus latent model sites without a guide site at their sample."""
    trace = raw_guide_trace.copy()
    for name, node in sample_sites(raw_guide_trace).items():
        if torch.is_tensor(node["value"]):
            trace.nodes[name] = dict(node, value=plain(node["value"]))
    for name, node in latent_sites(model_trace).items():
        if name not in trace.nodes:
            trace.nodes[name] = dict(node, value=plain(node["value"]))
    return trace
