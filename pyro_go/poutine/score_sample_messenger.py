"""The sampling messenger of the multi-sample score-function ELBOs (RLOO, DisARM)."""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample

from pyro_go.distributions.registry import unwrap_distribution
from pyro_go.infer.relax_site import relax_kind
from pyro_go.ops.provenance import track
from pyro_go.ops.relaxation import uniform_noise
from pyro_go.poutine.enumeration import refuse_enumeration


class ScoreSampleMessenger(Messenger):
    """Samples the guide's latent sites for a score-function estimator.

    * sites with a pathwise ``rsample`` sample as usual;
    * every other latent site samples without gradient, and its value is wrapped in a
      :class:`~pyro_go.ops.provenance.ProvenanceTensor` naming the site, so that the
      ELBO can tell which guide and model terms depend on it (the provenance tracking
      of :class:`~pyro.infer.TraceGraph_ELBO`).

    With ``antithetic`` (DisARM), such sites must be Bernoulli (a :class:`ValueError`
    naming the site otherwise) and sample ``b = 1[u < σ(θ)]`` from uniform noise ``u``
    kept in :attr:`noise`.  Antithetic pairs come in one of two layouts:

    * ``pair_dim``: the site lies in a plate of size 2 at this (negative, batch) dim,
      and its two slices get ``u`` and ``1 − u``;
    * ``partner``: the :attr:`noise` of a previous run, whose ``1 − u`` this run uses.

    Wrap the guide *inside* :func:`pyro.poutine.trace`.
    """

    def __init__(
        self,
        elbo: str,
        antithetic: bool = False,
        pair_dim: int | None = None,
        partner: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.elbo = elbo
        self.antithetic = antithetic
        self.pair_dim = pair_dim
        self.partner = partner
        #: the uniform noise of each antithetic Bernoulli site, by name
        self.noise: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        name, fn = msg["name"], msg["fn"]
        refuse_enumeration(msg, self.elbo)
        if fn.has_rsample:
            return
        if not self.antithetic:
            value = fn(*msg["args"], **msg["kwargs"]).detach()
        else:
            value = self._antithetic_sample(name, fn)
        msg["value"] = track(value, frozenset({name}))

    def _antithetic_sample(self, name: str, fn) -> torch.Tensor:
        if relax_kind(fn) != "bernoulli":
            raise ValueError(
                f"{self.elbo}: guide site '{name}' has distribution "
                f"{type(unwrap_distribution(fn)).__name__}; DisARM covers Bernoulli sites "
                "(and reparameterised continuous sites). Use pyro_go.TraceGO_ELBO or "
                "pyro_go.TraceRLOO_ELBO for this guide."
            )
        probs = unwrap_distribution(fn).probs.detach().expand(fn.shape())
        if self.partner is not None:
            if name not in self.partner or self.partner[name].shape != probs.shape:
                raise ValueError(
                    f"{self.elbo}: guide site '{name}' was not sampled with the same shape in "
                    "both runs of the antithetic pair; DisARM needs a guide whose Bernoulli "
                    "sites do not change between runs."
                )
            u = 1 - self.partner[name]
        elif self.pair_dim is not None:
            dim = self.pair_dim - fn.event_dim
            shape = list(probs.shape)
            shape[dim] = 1
            half = uniform_noise(torch.Size(shape), probs)
            u = torch.cat([half, 1 - half], dim)
        else:
            u = uniform_noise(probs.shape, probs)
        self.noise[name] = u
        return (u < probs).to(probs.dtype)
