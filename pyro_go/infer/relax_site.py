"""One Bernoulli or Categorical guide site as RELAX sees it: its logits, its noise, the
conditional reparameterisation, the relaxation, and the per-slice layout of its costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributions as tdist
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

from pyro_go.distributions.registry import unwrap_distribution
from pyro_go.ops import relaxation

RelaxKind = Literal["bernoulli", "categorical", "one_hot"]

#: logits are clamped to ``±LOGIT_BOUND`` so that sigmoid and softmax stay finite
LOGIT_BOUND = 30.0


def relax_kind(fn: tdist.Distribution) -> RelaxKind | None:
    """The RELAX family of a distribution (wrappers seen through), or ``None``."""
    base = unwrap_distribution(fn)
    if isinstance(base, tdist.Bernoulli):
        return "bernoulli"
    if isinstance(base, tdist.OneHotCategorical):
        return "one_hot"
    if isinstance(base, tdist.Categorical):
        return "categorical"
    return None


def site_logits(fn: tdist.Distribution, kind: RelaxKind) -> torch.Tensor:
    """The site's logits broadcast to its full shape (plus the category dim for an index
    Categorical), clamped to ``±LOGIT_BOUND``; attached to the guide's parameters."""
    base = unwrap_distribution(fn)
    shape = fn.shape() + base.logits.shape[-1:] if kind == "categorical" else fn.shape()
    return base.logits.expand(shape).clamp(-LOGIT_BOUND, LOGIT_BOUND)


def relaxed_log_prob(fn: tdist.Distribution, value: torch.Tensor) -> torch.Tensor:
    """``log p(value)`` continued to relaxed values, without support checks.

    A control variate must be continuous in the noise for eq. 9 to hold, so a one-hot
    value's density is ``Σ value · log π`` (torch's ``OneHotCategorical.log_prob`` takes
    an ``argmax``, which is piecewise constant and biases REBAR); Bernoulli's
    ``log_prob`` already is linear in the value.  Wrappers are applied as usual.
    """
    if isinstance(fn, tdist.Independent):
        log_prob = relaxed_log_prob(fn.base_dist, value)
        return log_prob.sum(tuple(range(-fn.reinterpreted_batch_ndims, 0)))
    if isinstance(fn, ExpandedDistribution):
        return relaxed_log_prob(fn.base_dist, value).expand(fn.batch_shape)
    if isinstance(fn, MaskedDistribution):
        log_prob = relaxed_log_prob(fn.base_dist, value)
        return torch.where(torch.as_tensor(fn._mask, device=log_prob.device), log_prob, 0.0)
    if isinstance(fn, tdist.OneHotCategorical):
        return (value * torch.log_softmax(fn.logits, -1)).sum(-1)
    validate, fn._validate_args = fn._validate_args, False
    try:
        return fn.log_prob(value)
    finally:
        fn._validate_args = validate


def reparameterize(kind: RelaxKind, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``z(l, u)`` (RELAX eq. 3 or the Gumbel-max trick)."""
    if kind == "bernoulli":
        return relaxation.logistic_z(logits, u)
    return relaxation.gumbel_z(logits, u)


def hard_threshold(kind: RelaxKind, z: torch.Tensor) -> torch.Tensor:
    """``b = H(z)``: the sample in the site's own representation."""
    if kind == "bernoulli":
        return (z > 0).to(z.dtype)
    index = z.argmax(-1)
    if kind == "categorical":
        return index
    return torch.nn.functional.one_hot(index, z.shape[-1]).to(z.dtype)


@dataclass
class RelaxSite:
    """A guide site that gets the RELAX estimator on its logits.

    :param name: the site's name.
    :param kind: ``"bernoulli"``, ``"categorical"`` (index values) or ``"one_hot"``.
    :param guide_site: the site's node in the guide trace.
    :param logits: :func:`site_logits`, attached to the guide's parameters.
    :param u: the noise that produced the sample.
    :param v: the noise of the conditional sample ``z̃ ~ p(z | b)``.
    :param value: the hard sample ``b``.
    :param frames: the plate frames whose slices have independent costs (the site's
        uncoupled frames); every other dim of the site is summed in its costs.
    """

    name: str
    kind: RelaxKind
    guide_site: dict
    logits: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    value: torch.Tensor
    frames: tuple

    @property
    def batch_rank(self) -> int:
        return len(self.guide_site["fn"].batch_shape)

    @property
    def index(self) -> torch.Tensor:
        """The sampled category (for categorical kinds)."""
        return self.value.argmax(-1) if self.kind == "one_hot" else self.value

    def z(self, logits: torch.Tensor) -> torch.Tensor:
        return reparameterize(self.kind, logits, self.u)

    def z_tilde(self, logits: torch.Tensor) -> torch.Tensor:
        """``z̃ ~ p(z | b)``, reparameterised by ``v`` (a function of the logits)."""
        if self.kind == "bernoulli":
            return relaxation.bernoulli_conditional_z(logits, self.value, self.v)
        return relaxation.categorical_conditional_z(logits, self.index, self.v)

    def relaxed(self, zeta: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """``σ_λ(ζ)`` in the site's value space (only for Bernoulli and one-hot sites)."""
        if self.kind == "bernoulli":
            return relaxation.relaxed_bernoulli(zeta, temperature)
        if self.kind == "one_hot":
            return relaxation.relaxed_one_hot(zeta, temperature)
        raise ValueError(
            f"TraceRELAX_ELBO: guide site '{self.name}' is an index-valued Categorical, "
            "which has no relaxed value for the REBAR term f(σ_λ(z)). Use "
            "OneHotCategorical at this site (in guide and model), or a control variate "
            "without the REBAR term: RELAX(rebar=False) or Baseline()."
        )

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """``∂ log p(b) / ∂l``."""
        if self.kind == "bernoulli":
            return relaxation.bernoulli_score(logits, self.value)
        return relaxation.categorical_score(logits, self.index)

    # ------------------------------------------------------------- slice layout

    def slice_dims(self) -> list[int]:
        """Positions, within the site's batch dims, of the independent slices."""
        rank = self.batch_rank
        return sorted(rank + frame.dim for frame in self.frames)

    def cost_shape(self) -> torch.Size:
        """The shape of a per-slice cost: slice dims kept, every other batch dim 1."""
        batch_shape = self.guide_site["fn"].batch_shape
        kept = set(self.slice_dims())
        return torch.Size(size if dim in kept else 1 for dim, size in enumerate(batch_shape))

    def as_cost(self, cost: torch.Tensor) -> torch.Tensor:
        """A cost summed to the slices, shaped :meth:`cost_shape`."""
        shape = self.cost_shape()
        while cost.dim() > len(shape):
            cost = cost.sum(0)
        return cost.reshape((1,) * (len(shape) - cost.dim()) + cost.shape)

    def features(self, zeta: torch.Tensor) -> torch.Tensor:
        """``ζ`` as ``[*slices, D]``: every dim that is not a slice dim (coupled plates,
        event dims, the category dim) flattened into ``D`` features."""
        kept = self.slice_dims()
        others = [dim for dim in range(zeta.dim()) if dim not in kept]
        moved = zeta.permute(kept + others)
        return moved.reshape(*(zeta.shape[dim] for dim in kept), -1)

    def broadcast_to_logits(self, cost: torch.Tensor) -> torch.Tensor:
        """A per-slice cost with trailing singleton dims to broadcast against logits."""
        return cost.reshape(cost.shape + (1,) * (self.logits.dim() - cost.dim()))
