"""Linear layers absorb one-coordinate perturbations without a matrix product.

In a perturbation replay (:mod:`pyro_go.infer.perturbation`) stack entry ``j`` of a
discrete site differs from the sample ``z`` in one coordinate ``i_j`` of its last dim,
by ``d_j`` (per plate slice).  A linear map then gives
``L(z + d_j e_{i_j}) = L(z) + d_j W[:, i_j]``: the GO authors' trick for the discrete VAE
(appendix I, step 1 of the Ξ procedure), applied here generically to any
``torch.nn.functional.linear`` or ``matmul`` whose input *is* the stacked value.  One
product for the base sample plus a broadcast multiply-add replaces the product over the
whole stack.  Any other use of the stacked value is computed as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@dataclass
class OneCoordinateStack:
    """A stack ``[n, *pad, *batch, K]`` whose entries are ``base`` except for one
    coordinate ``index[j]`` of the last dim, changed by ``delta[j]`` (``[n, *pad, *batch]``)."""

    stacked: torch.Tensor
    base: torch.Tensor
    index: torch.Tensor
    delta: torch.Tensor

    def columns_times_delta(self, columns: torch.Tensor) -> torch.Tensor:
        """``delta[j] * columns[index[j]]`` broadcast to ``[n, *pad, *batch, out]``."""
        chosen = columns[self.index]  # [n, out]
        chosen = chosen.reshape(
            (chosen.shape[0],) + (1,) * (self.delta.dim() - 1) + chosen.shape[1:]
        )
        return self.delta.unsqueeze(-1) * chosen


class AbsorbLinear(TorchFunctionMode):
    """While active, ``F.linear(x, W, b)`` and ``x @ W`` on a registered stack take the
    fast path.  ``hits`` counts the products absorbed."""

    def __init__(self, stacks: list[OneCoordinateStack]) -> None:
        super().__init__()
        self.stacks = {id(stack.stacked): stack for stack in stacks}
        self.hits = 0

    def _stack_of(self, tensor) -> OneCoordinateStack | None:
        stack = self.stacks.get(id(tensor))
        return stack if stack is not None and stack.stacked is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args:
            stack = self._stack_of(args[0])
            if stack is not None and func is F.linear:
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                if weight.dim() == 2:
                    self.hits += 1
                    base = F.linear(stack.base, weight, bias)
                    return base + stack.columns_times_delta(weight.t())
            if (
                stack is not None
                and func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
                and len(args) > 1
                and torch.is_tensor(args[1])
                and args[1].dim() == 2
            ):
                self.hits += 1
                return torch.matmul(stack.base, args[1]) + stack.columns_times_delta(args[1])
        return func(*args, **kwargs)
