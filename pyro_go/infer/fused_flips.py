"""The flipped Bernoulli likelihood's differences as one ``torch.compile`` graph per shape.

:func:`~pyro_go.infer.linear_absorption.bernoulli_flip_differences` spends most of its
time in ``Σ_p log(1 + s_p·t_{j,p})`` over every entry ``j`` and slice: for the discrete
VAE at batch 24 that is 3.8 M factors, which eager PyTorch takes in five passes per
cache-sized block (gather, multiply-add, product, log, sum).  Compiled, the gather and
the multiply-add fuse into the product, so each factor is read once, and the
products run down rows a whole number of SIMD vectors wide, which leaves the loop no
ragged tail and takes one ``log`` per 49 factors at ``P = 784``
(:func:`~pyro_go.infer.linear_absorption.aligned_row_width`).  ``x·W[:, i_j]`` and the difference
around the reduction go into the same graph.

Compiling costs a few seconds on the first call of a process (a C++ compiler is
needed on CPU) and about a second for each new shape, row width, dtype or device.
The kernels are static: ``dynamic=True`` kernels were 70% slower, and dynamic stack and
batch dims alone 30% slower.  So a shape is compiled on its second call: shapes seen
once (the first step's chunked replays, see ``TraceGO_ELBO(chunk_size=...)``) take the
eager reduction, and a training run compiles its batch size, its last smaller batch and
little else.  Past :data:`MAX_KERNELS` shapes, new shapes stay eager.  Where compiling
fails, a warning says why and the eager reduction is used from then on, which gives the
same values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

#: most shapes compiled (``torch.compile``'s default limit of recompilations)
MAX_KERNELS = 8


def _warn(error: Exception) -> None:
    warnings.warn(
        "TraceGO_ELBO(compile_likelihood=True): torch.compile failed, so the flipped "
        "Bernoulli likelihood uses the eager reduction (same values, slower). On CPU "
        f"torch.compile needs a C++ compiler. The error was: {error!r}",
        RuntimeWarning,
        stacklevel=4,
    )


class CompiledReduction:
    """``differences(h [S, P], value [S, P], chosen [n, P], change [n, S], width)``,
    which gives ``[n, S]`` and the tables it used, compiled with static shapes (and
    layout of ``chosen``) on each shape's second call.

    Calling it with ``h`` and ``value`` ``[*batch, P]`` and ``change`` ``[n, *slices]``
    (broadcasting) gives ``[n, *slices]``, or ``None`` where the caller should take the
    eager path: on a shape's first call, past :data:`MAX_KERNELS` shapes, and once
    compiling has failed."""

    def __init__(self, differences: Callable[..., torch.Tensor]) -> None:
        self.differences = differences
        #: the compiled function, made on first use; ``False`` once compiling has failed
        self.compiled = None
        #: calls so far per shape (with row width, dtype and device) not compiled yet
        self.calls: dict[tuple, int] = {}
        #: the shapes compiled
        self.kernels: set[tuple] = set()

    def _compile(self):
        try:
            return torch.compile(self.differences, dynamic=False)
        except Exception as error:  # e.g. a Python version dynamo does not support
            _warn(error)
            return False

    def __call__(
        self,
        h: torch.Tensor,
        value: torch.Tensor,
        chosen: torch.Tensor,
        change: torch.Tensor,
        width: int,
    ) -> torch.Tensor | None:
        if self.compiled is None:
            self.compiled = self._compile()
        if self.compiled is False:
            return None
        slices = change.shape[1:]
        if slices != h.shape[:-1]:
            slices = torch.broadcast_shapes(slices, h.shape[:-1])
        num, pixels = change.shape[0], h.shape[-1]
        flat_h = h.expand(slices + (pixels,)).reshape(-1, pixels)
        flat_value = value.expand(slices + (pixels,)).reshape(-1, pixels)
        flat_change = change.expand((num,) + slices).reshape(num, -1)
        key = (flat_h.shape, chosen.shape, chosen.stride(), width, chosen.dtype, chosen.device)
        if key not in self.kernels:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] < 2 or len(self.kernels) >= MAX_KERNELS:
                return None
            self.kernels.add(key)
        try:
            total, _ = self.compiled(flat_h, flat_value, chosen, flat_change, width)
        except Exception as error:  # a shape compiles on its first call here
            self.compiled = False
            _warn(error)
            return None
        return total.reshape((num,) + slices)
