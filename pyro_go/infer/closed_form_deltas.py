"""``D_y f`` of binary sites in closed form, laid out like ``Δ`` itself: no stack.

Where the provenance run's recorded linear outputs give every term of ``f`` that a flip
of a Bernoulli leaf site ``z`` ``[*batch, K]`` changes (:mod:`pyro_go.infer.recorded_linear`:
its own Bernoulli prior, and Bernoulli likelihoods whose logits are a recorded
``h = F.linear(z, W, b)``), the difference for flipping coordinate ``k`` in every slice
is, with ``c = 1 − 2z`` and each term's scale ``s``,

``Δ[..., k] = c_k·(Σ_prior s·logit_k − s_q·logit^q_k)
+ Σ_likelihood s·(c_k·x·W[:, k] − Σ_p log(1 + σ(h_p)·(e^{c_k W[p, k]} − 1)))``

(appendix I, eqs. 34–36: the prior and guide terms are one coordinate's correction,
``log p(1 − z_k) − log p(z_k) = c_k·logit_k``; the likelihood's is
:func:`~pyro_go.infer.linear_absorption.bernoulli_flip_differences`).  All ``K``
coordinates and all slices come out at once as ``[*batch, K]``, which is ``Δ``'s own
layout.  The general path (:class:`~pyro_go.infer.perturbation.PerturbationReplay`)
evaluates ``f`` over a stack of ``K + 1`` entries, subtracts the base entry and spreads
the differences over the elements, which is the same numbers in about ten times as many
small tensor operations (``benchmarks/vae_step_time.py`` measures the difference).

Only terms whose layout is that simple take this path: binary sites whose flips change
one coordinate of the last dim (every other dim a plate in which every term lies),
elementwise Bernoulli terms with a scalar scale and no mask, likelihoods with one event
dim over the layer's outputs.  Anything else returns ``None`` and takes the general path,
which gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.distributions import constraints

from pyro_go.infer.linear_absorption import bernoulli_flip_differences, elementwise_base
from pyro_go.infer.recorded_linear import RecordedTerm

if TYPE_CHECKING:
    from pyro_go.infer.perturbation import DiscreteLeafSite


def _scalar_scale(node: dict) -> float | torch.Tensor | None:
    """The node's scale when it is one number and the node has no mask, else ``None``."""
    scale = node["scale"]
    if node["mask"] is not None or (torch.is_tensor(scale) and scale.dim() > 0):
        return None
    return scale


def _bernoulli_logits(fn, value: torch.Tensor) -> torch.Tensor | None:
    """``fn``'s logits broadcast to ``value``'s shape when ``fn`` is an elementwise
    Bernoulli over ``value`` (possibly expanded and with event dims), else ``None``."""
    found = elementwise_base(fn)
    if found is None or not isinstance(found[0], torch.distributions.Bernoulli):
        return None
    logits = found[0].logits
    if torch.broadcast_shapes(logits.shape, value.shape) != value.shape:
        return None
    return logits


def _likelihood_differences(
    term: RecordedTerm, sign: torch.Tensor, compiled: bool
) -> torch.Tensor | None:
    """The likelihood's ``Δ`` ``[*batch, K]`` for flips ``sign`` ``[*batch, K]``, or
    ``None`` where its layout is not ``h`` ``[*batch, P]`` with one event dim."""
    found = elementwise_base(term.node["fn"])
    output = term.output
    h, value = output.output, term.node["value"]
    if found is None or found[1] != 1 or h.shape[:-1] != sign.shape[:-1]:
        return None
    if torch.broadcast_shapes(value.shape, h.shape) != h.shape:
        return None
    differences = bernoulli_flip_differences(
        h, value, output.columns, sign.movedim(-1, 0), compiled
    )
    return None if differences is None else differences.movedim(0, -1)


def _site_deltas(
    site: DiscreteLeafSite, terms: list[RecordedTerm], compiled: bool
) -> torch.Tensor | None:
    """``Δ`` ``[1, *value.shape]`` of one site from its terms, or ``None``."""
    if not site.perturbs_last_dim_only or site.base_fn.support is not constraints.boolean:
        return None
    guide_node = site.guide_site
    guide_logits = _bernoulli_logits(guide_node["fn"], site.value)
    guide_scale = _scalar_scale(guide_node)
    if guide_logits is None or guide_scale is None:
        return None
    sign = 1 - 2 * site.value
    logit_sum = -guide_scale * guide_logits
    likelihoods = []
    for term in terms:
        scale = _scalar_scale(term.node)
        if scale is None:
            return None
        if term.output is None:
            logits = _bernoulli_logits(term.node["fn"], site.value)
            if logits is None:
                return None
            logit_sum = logit_sum + scale * logits
        else:
            likelihoods.append((scale, term))
    delta = sign * logit_sum
    for scale, term in likelihoods:
        differences = _likelihood_differences(term, sign, compiled)
        if differences is None:
            return None
        delta = delta + scale * differences
    return delta.unsqueeze(0)


def closed_form_deltas(
    sites: Sequence[DiscreteLeafSite], plan: Sequence[RecordedTerm], compiled: bool = False
) -> dict[str, torch.Tensor] | None:
    """Site name -> ``Δ`` ``[1, *value.shape]`` for every site, from the recorded terms
    ``plan`` (each depends on one site), or ``None`` where some site or term is not of
    the simple layout this module covers.  ``compiled`` compiles the likelihoods'
    reduction (:mod:`pyro_go.infer.fused_flips`)."""
    deltas = {}
    for site in sites:
        own = [term for term in plan if term.site == site.name]
        delta = _site_deltas(site, own, compiled)
        if delta is None:
            return None
        deltas[site.name] = delta
    return deltas
