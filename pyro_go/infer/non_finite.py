"""Checks that stop a non-finite observation or loss before it reaches a parameter.

``inf`` in observed data makes the site's log-density infinite and every gradient that
passes through it ``nan`` (a masked entry too: its gradient is ``0 · ∞``), and one
optimizer step then writes ``nan`` into every parameter.  These checks raise a
:class:`ValueError` naming the sites instead, before ``backward`` runs, so the param
store is left as it was.
"""

from __future__ import annotations

import torch
from pyro.poutine.trace_struct import Trace

from pyro_go.ops.provenance import strip


def _is_finite(value) -> bool:
    """Whether every entry is finite: ``0 · x`` sums to ``nan`` exactly when one is not
    (one fused reduction: several times cheaper than ``isfinite(x).all()`` on CPU)."""
    value = strip(torch.as_tensor(value))
    return bool(torch.isfinite((value * 0).sum()))


def _first_non_finite(value: torch.Tensor) -> str:
    bad = ~torch.isfinite(value)
    index = tuple(int(i) for i in bad.nonzero()[0])
    return f"{int(bad.sum())} of {value.numel()} values, e.g. {value[index].item()} at {index}"


def check_observations(model_trace: Trace, elbo: str) -> None:
    """Raise a :class:`ValueError` naming each observed site of ``model_trace`` whose
    value has a non-finite entry (masked or not)."""
    bad = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = strip(site["value"])
        if torch.is_tensor(value) and value.is_floating_point() and not _is_finite(value):
            bad.append(f"'{name}' ({_first_non_finite(value.detach())})")
    if bad:
        raise ValueError(
            f"{elbo}: observed site {', '.join(bad)} has non-finite data. Its "
            "log-density and the gradients through it would be non-finite (masked entries "
            "too), and the optimizer would write nan into the parameters. Remove those "
            "entries or replace them with finite values; for missing data, put any finite "
            "value there and pass obs_mask to pyro.sample."
        )


def check_finite_loss(
    loss, model_trace: Trace, guide_trace: Trace, elbo: str, what: str = "the loss"
) -> None:
    """Raise a :class:`ValueError` if ``loss`` (a particle's surrogate loss, or ``what``
    else) is not finite, naming the sites whose log-density is not."""
    if not torch.is_tensor(loss) or _is_finite(loss.detach()):
        return
    bad = [
        f"{side} site '{name}' (log-density {strip(site['log_prob_sum']).item()})"
        for side, trace in (("model", model_trace), ("guide", guide_trace))
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and "log_prob_sum" in site
        if not _is_finite(site["log_prob_sum"].detach())
    ]
    where = (
        "at " + ", ".join(bad) + ". Check the data and the parameters there (a factor or "
        "log-density of -inf means an impossible value)"
        if bad
        else "although every site's log-density is finite: the gradient estimator's terms "
        "overflowed (check for extreme logits or parameters)"
    )
    raise ValueError(
        f"{elbo}: {what} is {loss.item()} {where}. Nothing was back-propagated, so no "
        "parameter changed."
    )
