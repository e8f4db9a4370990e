"""The trace-time check for non-finite observed data (the twin of
:mod:`pyro_go.infer.non_finite`).

``inf`` in observed data makes the site's log-density infinite and every gradient that
passes through it ``nan`` (a masked entry too: its gradient is ``0 · ∞``).  Where the
data are known when the ELBO is traced (eager calls, ``svi.update``, and ``svi.run``,
which closes over its arguments), this check raises a :class:`ValueError` naming the
site; data passed as arguments of a ``jax.jit``-compiled function are abstract there, and
:mod:`numpyro_go.infer.checked_svi` reports them after the step instead.
"""

from __future__ import annotations

import jax
import numpy as np


def non_finite_observations(trace_: dict) -> list[str]:
    """``"'name' (n of N values, e.g. inf at (i,))"`` for each observed site of ``trace_``
    whose value is concrete and has a non-finite entry."""
    bad = []
    for name, site in trace_.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = site["value"]
        if isinstance(value, jax.core.Tracer):
            continue
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.inexact) or np.isfinite(value).all():
            continue
        nonfinite = ~np.isfinite(value)
        index = tuple(int(i) for i in np.argwhere(nonfinite)[0])
        bad.append(
            f"'{name}' ({int(nonfinite.sum())} of {value.size} values, "
            f"e.g. {value[index]} at {index})"
        )
    return bad


def check_observations(model_trace: dict, elbo: str) -> None:
    """Raise a :class:`ValueError` naming each observed site of ``model_trace`` whose
    (concrete) value has a non-finite entry, masked or not."""
    bad = non_finite_observations(model_trace)
    if bad:
        raise ValueError(
            f"{elbo}: observed site {', '.join(bad)} has non-finite data. Its "
            "log-density and the gradients through it would be non-finite (masked entries "
            "too), and the optimizer would write nan into the parameters. Remove those "
            "entries or replace them with finite values; for missing data, put any finite "
            "value there and pass obs_mask to numpyro.sample."
        )
