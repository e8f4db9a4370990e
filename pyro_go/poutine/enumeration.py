"""The check that the sampling messengers share."""

from __future__ import annotations


def refuse_enumeration(msg, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the site if a guide site asks for enumeration:
    the estimators of this package work from samples."""
    flag = msg["infer"].get("enumerate")
    if flag:
        raise ValueError(
            f"{elbo}: guide site '{msg['name']}' asks for enumeration "
            f"(infer={{'enumerate': {flag!r}}}). {elbo} estimates gradients from samples; "
            "remove the enumerate flag (or config_enumerate) from the guide, or use "
            "pyro.infer.TraceEnum_ELBO for this site."
        )
