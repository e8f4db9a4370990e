"""Tensors whose values are computed only when an operation reads them.

A perturbation replay (:mod:`pyro_go.infer.perturbation`) hands the model stacks of
perturbed values ``[n, *batch, D]`` that differ from one sample in one coordinate per
entry, and linear layers turn them into logits that differ from one output by one
column of ``W``.  The structure alone is what the fast paths use (a linear layer
absorbs the change, the flipped Bernoulli likelihood has a closed form), so
materialising the dense stack, or the dense logits, is wasted work: two or three passes
over ``[n, *batch, D]`` per replay, and page faults for the fresh memory (issue #6).

A :class:`DeferredTensor` has the shape, dtype and device of the dense value but no
storage.  It carries its ``structure`` for the code that knows it, and any other
operation (a nonlinearity, a ``log_prob``, printing) computes the dense value once and
runs on that.  Having no storage, it cannot be read without computing: nothing sees
wrong values.  An in-place operation drops the structure, which no longer describes
the value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._pytree import tree_map


class DeferredTensor(torch.Tensor):
    """A tensor of ``shape`` whose value is ``compute()``, called on first use, with a
    ``structure`` that fast paths may use instead of the value."""

    structure: object
    _compute: Callable[[], torch.Tensor] | None
    _dense: torch.Tensor | None

    @staticmethod
    def __new__(
        cls,
        shape: torch.Size,
        like: torch.Tensor,
        compute: Callable[[], torch.Tensor],
        structure: object,
    ):
        deferred = torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=like.dtype, device=like.device, requires_grad=False
        )
        deferred.structure = structure
        deferred._compute, deferred._dense = compute, None
        return deferred

    @property
    def computed(self) -> bool:
        """Whether something has read the value."""
        return self._dense is not None

    def dense(self) -> torch.Tensor:
        """The value, computed on the first call."""
        if self._dense is None:
            self._dense = self._compute()
            self._compute = None
            if self._dense.shape != self.shape:
                raise RuntimeError(
                    f"deferred tensor of shape {tuple(self.shape)} computed a value of shape "
                    f"{tuple(self._dense.shape)}"
                )
        return self._dense

    # Python-level functions go straight to the dispatcher, where the value is computed;
    # a TorchFunctionMode (pyro_go.infer.linear_absorption.AbsorbLinear) still sees them
    # first and may use the structure instead.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.is_mutable:
            # an in-place op changes the dense value: the structure no longer describes it
            for value in (*args, *kwargs.values()):
                if isinstance(value, DeferredTensor):
                    value.structure = None
        return func(*tree_map(densify, args), **tree_map(densify, kwargs))

    # the two conversions that refuse tensor subclasses read the dense value instead
    def tolist(self):
        return self.dense().tolist()

    def numpy(self, *, force: bool = False):
        return self.dense().numpy(force=force)

    def __repr__(self) -> str:
        return f"DeferredTensor({self.dense()!r})"


def densify(value):
    """``value``'s dense tensor if it is a :class:`DeferredTensor`, else ``value``."""
    return value.dense() if isinstance(value, DeferredTensor) else value


def structure_of(value) -> object | None:
    """The ``structure`` of a :class:`DeferredTensor`, else ``None``."""
    return value.structure if isinstance(value, DeferredTensor) else None
