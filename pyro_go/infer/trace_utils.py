"""Small helpers over Pyro traces shared by the ELBOs of :mod:`pyro_go.infer`."""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask

from pyro_go.ops.provenance import strip


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
