"""Linear layers absorb few-coordinate perturbations without a matrix product.

In a perturbation replay (:mod:`pyro_go.infer.perturbation`) stack entry ``j`` of a
Bernoulli or count site differs from the sample ``z`` in one coordinate ``i_j`` of its
last dim, by ``d_j`` (per plate slice).  A linear map then gives
``L(z + d_j e_{i_j}) = L(z) + d_j W[:, i_j]``: the GO authors' trick for the discrete VAE
(appendix I, step 1 of the Ξ procedure), applied here generically to any
``torch.nn.functional.linear`` or ``matmul`` whose input *is* the stacked value.  One
product for the base sample plus a broadcast multiply-add replaces the product over the
whole stack.

A one-hot Categorical site ``[..., N, K]`` changes, in entry ``j``, the category of
variable ``v_j`` from ``old`` to ``new`` (per slice).  Its linear consumer usually sees
it flattened to ``[..., N·K]``: the flattening (``reshape``, ``view``, ``flatten``) of a
registered :class:`OneHotStack` is registered in turn as a :class:`SparseStack` with the
two changed coordinates ``v_j K + old`` (−1) and ``v_j K + new`` (+1) per slice, so the
layer adds the difference of two columns of ``W``.  Any other use of a stacked value is
computed as usual.

When a binary site's one-coordinate stack goes through a linear layer, the output is
the same logits ``h`` shifted by ``±W[:, i_j]`` (a :class:`ShiftedOutput`); if those go
straight into an observed ``Bernoulli(logits=...)``, :func:`shifted_bernoulli_log_prob`
evaluates the flipped likelihood in closed form, without a ``softplus`` per entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch.overrides import TorchFunctionMode


@dataclass
class SparseStack:
    """A stack ``[n, *pad, *batch, D]`` whose entries are ``base`` plus ``delta`` at
    coordinates ``index`` of the last dim.

    Either one coordinate per entry shared by all slices (``index`` ``[n]``, ``delta``
    ``[n, *pad, *batch]``) or ``k`` coordinates per slice (``index`` and ``delta``
    ``[n, *pad, *batch, k]``).  A shared-coordinate stack of a discrete site may also
    name the value each entry takes there: ``alternatives[alternative[j]]`` at
    ``index[j]`` (``alternatives`` ``[A, *base.shape]``), which lets the site's own
    log-densities skip the stack (:func:`one_coordinate_log_prob`).
    """

    stacked: torch.Tensor
    base: torch.Tensor
    index: torch.Tensor
    delta: torch.Tensor
    alternatives: torch.Tensor | None = None
    alternative: torch.Tensor | None = None
    #: whether every ``delta`` is ``−1``, ``0`` or ``1`` (a binary site's flips)
    binary: bool = False

    def columns_times_delta(self, columns: torch.Tensor) -> torch.Tensor:
        """``Σ delta · columns[index]`` broadcast to ``[n, *pad, *batch, out]``."""
        if self.index.dim() == 1:
            chosen = columns[self.index]  # [n, out]
            chosen = chosen.reshape(
                (chosen.shape[0],) + (1,) * (self.delta.dim() - 1) + chosen.shape[1:]
            )
            return self.delta.unsqueeze(-1) * chosen
        total = 0
        for j in range(self.index.shape[-1]):
            total = total + self.delta[..., j, None] * columns[self.index[..., j]]
        return total


@dataclass
class OneHotStack:
    """A one-hot stack ``[n, *pad, *batch, N, K]`` whose entry ``j`` moves variable
    ``variable[j]`` from category ``old`` to ``new`` (``[n, *pad, *batch]``) in each
    slice.  Becomes a :class:`SparseStack` when its last two dims are flattened."""

    stacked: torch.Tensor
    base: torch.Tensor
    variable: torch.Tensor
    old: torch.Tensor
    new: torch.Tensor

    def flattened(self, stacked: torch.Tensor) -> SparseStack:
        num_categories = self.base.shape[-1]
        offset = (self.variable * num_categories).reshape((-1,) + (1,) * (self.old.dim() - 1))
        index = torch.stack([offset + self.old, offset + self.new], dim=-1)
        changed = (self.old != self.new).to(stacked.dtype)
        delta = torch.stack([-changed, changed], dim=-1)
        return SparseStack(stacked, self.base.flatten(-2), index, delta)


@dataclass
class ShiftedOutput:
    """``value`` ``[n, *pad, *batch, out]``, a linear layer's output on a binary
    one-coordinate :class:`SparseStack`, equals ``base`` (``[*batch, out]``, shared by all
    entries) plus ``change[j] · columns[index[j]]``."""

    value: torch.Tensor
    base: torch.Tensor
    change: torch.Tensor
    index: torch.Tensor
    columns: torch.Tensor


#: factors multiplied before one ``log`` in :func:`shifted_bernoulli_log_prob`
PRODUCT_GROUP = 8
#: the grouped product is used while every ``|W| <`` this (``e^{±8·10}`` fits float32)
PRODUCT_WEIGHT_BOUND = 10.0


def _elementwise_base(fn):
    """``(base, reinterpreted)`` when ``fn`` is an elementwise distribution, possibly
    expanded and with ``reinterpreted`` trailing dims made event dims; else ``None``."""
    reinterpreted = 0
    while isinstance(fn, (torch.distributions.Independent, ExpandedDistribution)):
        if isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if isinstance(fn, MaskedDistribution) or fn.event_shape != ():
        return None
    return fn, reinterpreted


def one_coordinate_log_prob(fn, stack: SparseStack) -> torch.Tensor | None:
    """``fn.log_prob(stack.stacked)`` from the log-densities of the base value and of the
    alternatives plus a correction at each entry's coordinate, when ``fn`` is elementwise
    over the last dim and the stack names its alternatives; else ``None``.  The prior and
    guide half of appendix I's trick: ``log q(z with z_i flipped) = log q(z) − log q_i(z_i)
    + log q_i(1 − z_i)``, without a log-density over the whole stack."""
    found = _elementwise_base(fn)
    if found is None or stack.alternatives is None:
        return None
    base_fn, reinterpreted = found
    old = base_fn.log_prob(stack.base)  # [*shape]
    new = base_fn.log_prob(stack.alternatives)  # [A, *shape]
    new = new[(stack.alternative, Ellipsis, stack.index)]  # [n, *shape[:-1]]
    old_at = old.index_select(-1, stack.index).movedim(-1, 0)  # [n, *shape[:-1]]
    correction = (new - old_at).reshape(stack.delta.shape)
    correction = torch.where(stack.delta != 0, correction, correction.new_zeros(()))
    if reinterpreted == 0:
        changed = torch.nn.functional.one_hot(stack.index, old.shape[-1]).to(old.dtype)
        changed = changed.reshape(
            (changed.shape[0],) + (1,) * (stack.delta.dim() - 1) + old.shape[-1:]
        )
        return old + changed * correction.unsqueeze(-1)
    total = old.sum(tuple(range(-reinterpreted, 0)))
    if reinterpreted > 1:
        correction = correction.sum(tuple(range(-(reinterpreted - 1), 0)))
    return total + correction


def shifted_bernoulli_log_prob(fn, value: torch.Tensor, shifted: dict) -> torch.Tensor | None:
    """``fn.log_prob(value)`` for an elementwise ``Bernoulli(logits=h + d·W[:, i])`` whose
    logits are a registered :class:`ShiftedOutput` (``d ∈ {−1, 0, 1}``), else ``None``.

    With ``s = σ(h)`` and ``δ = d·W[:, i]``, elementwise
    ``log p(x | h + δ) = log p(x | h) + x·δ − log(1 + s·(e^δ − 1))``; ``e^{±W} − 1`` is one
    table for all entries, so an entry costs a multiply-add per element instead of a
    ``softplus``, and over an event dim the logarithms are taken of products of
    :data:`PRODUCT_GROUP` factors (each in ``[e^{−|W|}, e^{|W|}]``, so no overflow while
    ``|W| <`` :data:`PRODUCT_WEIGHT_BOUND`; beyond that each factor gets a ``log1p``).  The
    likelihood half of appendix I's trick; more accurate than differencing two full
    likelihoods.  The NumPyro twin is
    :func:`numpyro_go.infer.perturbation.shifted_bernoulli_log_prob`."""
    found = _elementwise_base(fn)
    if found is None or not isinstance(found[0], torch.distributions.Bernoulli):
        return None
    base_fn, reinterpreted = found
    record = shifted.get(id(base_fn.logits))
    if record is None or record.value is not base_fn.logits:
        return None
    h = record.base
    old = -F.softplus(-h) * value - F.softplus(h) * (1 - value)  # [*batch, P]
    lead = (record.index.shape[0],) + (1,) * (record.change.dim() - 1)
    chosen = record.columns[record.index]  # [n, P]
    up = torch.expm1(chosen).reshape(lead + h.shape[-1:])
    down = torch.expm1(-chosen).reshape(lead + h.shape[-1:])
    change = record.change.unsqueeze(-1)
    # entries with change 0 (padding) are fixed below, so two tables suffice
    factor_plus_one = torch.addcmul(
        h.new_ones(()), torch.sigmoid(h), torch.where(change > 0, up, down)
    )
    if reinterpreted == 0:
        linear = change * chosen.reshape(lead + h.shape[-1:]) * value
        flipped = old + linear - torch.log(factor_plus_one)
        return torch.where(change != 0, flipped, old)
    if record.columns.abs().max() < PRODUCT_WEIGHT_BOUND:
        pad = (-factor_plus_one.shape[-1]) % PRODUCT_GROUP
        grouped = F.pad(factor_plus_one, (0, pad), value=1.0) if pad else factor_plus_one
        log_factor = grouped.unflatten(-1, (-1, PRODUCT_GROUP)).prod(-1).log().sum(-1)
    else:
        log_factor = factor_plus_one.log().sum(-1)
    # Σ_p x_p · W[p, i_j] for every entry, as one product
    x_dot = torch.einsum("...p,np->n...", value, chosen)
    x_dot = x_dot.reshape(
        x_dot.shape[:1] + (1,) * (record.change.dim() - x_dot.dim()) + x_dot.shape[1:]
    )
    old_total = old.sum(-1)
    total = torch.where(
        record.change != 0, old_total + record.change * x_dot - log_factor, old_total
    )
    if reinterpreted > 1:
        total = total.sum(tuple(range(-(reinterpreted - 1), 0)))
    return total


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
_FLATTENS = (
    torch.reshape,
    torch.Tensor.reshape,
    torch.Tensor.view,
    torch.flatten,
    torch.Tensor.flatten,
)


class AbsorbLinear(TorchFunctionMode):
    """While active, ``F.linear(x, W, b)`` and ``x @ W`` on a registered stack take the
    fast path, and flattening a registered one-hot stack registers the result.  ``hits``
    counts the products absorbed."""

    def __init__(self, stacks: list) -> None:
        super().__init__()
        self.stacks = {id(stack.stacked): stack for stack in stacks}
        self.hits = 0
        #: id of a linear output -> its :class:`ShiftedOutput` structure
        self.shifted: dict[int, ShiftedOutput] = {}

    def _stack_of(self, tensor):
        stack = self.stacks.get(id(tensor))
        return stack if stack is not None and stack.stacked is tensor else None

    def _linear(self, stack: SparseStack, weight: torch.Tensor, bias) -> torch.Tensor:
        self.hits += 1
        base = F.linear(stack.base, weight, bias)
        out = base + stack.columns_times_delta(weight.t())
        if stack.binary and stack.index.dim() == 1:
            self.shifted[id(out)] = ShiftedOutput(out, base, stack.delta, stack.index, weight.t())
        return out

    def _broadcast(self, args, outs):
        """Distributions broadcast and expand their parameters: a shifted output keeps its
        structure through a shape-preserving ``broadcast_tensors`` or ``expand``."""
        for arg, out in zip(args, outs, strict=True):
            record = self.shifted.get(id(arg))
            if record is not None and record.value is arg and out.shape == arg.shape:
                self.shifted[id(out)] = ShiftedOutput(
                    out, record.base, record.change, record.index, record.columns
                )
        return outs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.shifted and func is torch.broadcast_tensors:
            return self._broadcast(args, func(*args, **kwargs))
        if self.shifted and func is torch.Tensor.expand:
            return self._broadcast(args[:1], (func(*args, **kwargs),))[0]
        stack = self._stack_of(args[0]) if args else None
        if isinstance(stack, OneHotStack) and func in _FLATTENS:
            out = func(*args, **kwargs)
            if out.shape == stack.stacked.shape[:-2] + (stack.stacked.shape[-2:].numel(),):
                flat = stack.flattened(out)
                self.stacks[id(out)] = flat
            return out
        if isinstance(stack, SparseStack):
            if func is F.linear:
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                if weight.dim() == 2:
                    return self._linear(stack, weight, bias)
            if func in _MATMULS and len(args) > 1 and torch.is_tensor(args[1]):
                if args[1].dim() == 2:
                    return self._linear(stack, args[1].t(), None)
        return func(*args, **kwargs)
