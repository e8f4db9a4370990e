"""The sampling messenger that makes a guide emit RELAX-ready samples."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample

from pyro_go.distributions.registry import unwrap_distribution
from pyro_go.infer.relax_site import (
    RelaxKind,
    hard_threshold,
    relax_kind,
    reparameterize,
    site_logits,
)
from pyro_go.ops.provenance import track
from pyro_go.ops.relaxation import uniform_noise
from pyro_go.poutine.enumeration import refuse_enumeration


class NoiseDraw(NamedTuple):
    """What a RELAX site's sample was made of."""

    kind: RelaxKind
    logits: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor


class RelaxSampleMessenger(Messenger):
    """Samples the guide's latent sites the way RELAX needs them.

    * Bernoulli, Categorical and OneHotCategorical sites sample ``b = H(z(l, u))`` from
      uniform noise ``u`` (RELAX eq. 3 / Gumbel-max) and draw the noise ``v`` of the
      conditional sample ``z̃``; both are kept in :attr:`draws`.  A site may fix them with
      ``infer={"relax_noise": (u, v)}``.  The value is wrapped in a
      :class:`~pyro_go.ops.provenance.ProvenanceTensor` naming the site, so the ELBO can
      tell which model terms depend on it;
    * sites with a pathwise ``rsample`` sample as usual;
    * anything else raises a :class:`ValueError` naming the site and the way out.

    Wrap the guide *inside* :func:`pyro.poutine.trace`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.draws: dict[str, NoiseDraw] = {}

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        name, fn = msg["name"], msg["fn"]
        refuse_enumeration(msg, "TraceRELAX_ELBO")
        kind = relax_kind(fn)
        if kind is None:
            if fn.has_rsample:
                return
            raise ValueError(
                f"TraceRELAX_ELBO: guide site '{name}' has distribution "
                f"{type(unwrap_distribution(fn)).__name__}, which RELAX does not cover "
                "(it covers Bernoulli, Categorical, OneHotCategorical and distributions "
                "with rsample). Use pyro_go.TraceGO_ELBO, which covers count and "
                "non-reparameterisable continuous sites."
            )
        logits = site_logits(fn, kind)
        noise = msg["infer"].get("relax_noise")
        if noise is None:
            u, v = uniform_noise(logits.shape, logits), uniform_noise(logits.shape, logits)
        else:
            u, v = (torch.as_tensor(x).to(logits).expand(logits.shape) for x in noise)
        self.draws[name] = NoiseDraw(kind, logits, u, v)
        with torch.no_grad():
            value = hard_threshold(kind, reparameterize(kind, logits, u))
        msg["value"] = track(value, frozenset({name}))
