"""The refusal of enumerated sites that the sampling messengers and the ELBOs share."""

from __future__ import annotations

from pyro.poutine.trace_struct import Trace


def _asks_for_enumeration(elbo: str, side: str, name: str, flag, way_out: str) -> ValueError:
    return ValueError(
        f"{elbo}: {side} site '{name}' asks for enumeration (infer={{'enumerate': {flag!r}}}). "
        f"{elbo} estimates gradients from samples; {way_out}, or use "
        "pyro.infer.TraceEnum_ELBO for this site."
    )


def refuse_enumeration(msg, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the site if a guide site asks for enumeration:
    the estimators of this package work from samples."""
    flag = msg["infer"].get("enumerate")
    if flag:
        raise _asks_for_enumeration(
            elbo,
            "guide",
            msg["name"],
            flag,
            "remove the enumerate flag (or config_enumerate) from the guide",
        )


def refuse_model_enumeration(model_trace: Trace, guide_trace: Trace, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the first latent model site without a guide site
    that asks for enumeration (``config_enumerate`` on a mixture's assignments, written
    for :class:`~pyro.infer.TraceEnum_ELBO`): sampled from the prior instead of summed
    out, it would silently change the objective."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in guide_trace.nodes:
            continue
        flag = site["infer"].get("enumerate")
        if flag:
            raise _asks_for_enumeration(
                elbo,
                "model",
                name,
                flag,
                "it has no guide site, so it would be drawn from the prior instead of "
                "summed out, a different objective. Add a guide site for it (and remove "
                "the enumerate flag) to estimate its gradient from samples",
            )
