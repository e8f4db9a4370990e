"""The flipped Bernoulli likelihood's reduction as one ``torch.compile`` kernel.

:func:`~pyro_go.infer.linear_absorption.shifted_bernoulli_log_prob` spends most of its
time in ``Σ_p log(1 + s_p·t_{j,p})`` over every entry ``j`` and slice: for the discrete
VAE at batch 24 that is 3.8 M factors, which eager PyTorch takes in five passes per
cache-sized block (gather, multiply-add, product, log, sum).  Compiled, the gather and
the multiply-add fuse into the product, so each factor is read once: 1.6 → 0.6 ms on
one CPU core at batch 24, 6.3 → 2.5 ms at batch 100 (the reduction alone).

Compiling costs a few seconds on the first call of a process (a C++ compiler is
needed on CPU) and about a second for each new shape, product group, dtype or device.
The kernels are static: ``dynamic=True`` kernels were 70% slower, and dynamic stack and
batch dims alone 30% slower.  So a shape is compiled on its second call: shapes seen
once (the first step's chunked replays, see ``TraceGO_ELBO(chunk_size=...)``) take the
eager reduction, and a training run compiles its batch size, its last smaller batch and
little else.  Past :data:`MAX_KERNELS`
shapes, new shapes stay eager.  Where compiling fails, a warning says why and the eager
reduction is used from then on, which gives the same values.
"""

from __future__ import annotations

import warnings

import torch

#: the compiled reduction, made on first use; ``False`` once compiling has failed
_compiled = None
#: calls so far per shape (with product group, dtype and device) not compiled yet
_calls: dict[tuple, int] = {}
#: the shapes compiled
_kernels: set[tuple] = set()
#: most shapes compiled (``torch.compile``'s default limit of recompilations)
MAX_KERNELS = 8


def _log_factors(
    sigmoid: torch.Tensor, tables: torch.Tensor, change: torch.Tensor, group: int
) -> torch.Tensor:
    """``Σ_p log(1 + s_p·t_p)`` ``[n, S]`` for ``s`` ``[S, P]``, the tables ``[2n, P]``
    and ``change`` ``[n, S]``: the reduction of
    :func:`~pyro_go.infer.linear_absorption._flipped_log_factors`, written for the
    compiler to fuse (no blocks, no ``out=`` buffers)."""
    num, width = change.shape[0], tables.shape[1]
    rows = torch.arange(num, device=change.device).unsqueeze(-1) + num * (change < 0)
    factor = 1 + sigmoid * tables[rows]  # [n, S, P], never formed once compiled
    whole = width - width % group
    grouped = factor[..., :whole].unflatten(-1, (group, whole // group))
    total = grouped.prod(-2).log().sum(-1)
    if whole < width:
        total = total + factor[..., whole:].prod(-1).log()
    return total


def _compile():
    """The compiled :func:`_log_factors`, or ``False`` (with a warning) if ``torch.compile``
    is unavailable here."""
    try:
        return torch.compile(_log_factors, dynamic=False)
    except Exception as error:  # e.g. no inductor support on this platform
        _warn(error)
        return False


def _warn(error: Exception) -> None:
    warnings.warn(
        "TraceGO_ELBO(compile_likelihood=True): torch.compile failed, so the flipped "
        "Bernoulli likelihood uses the eager reduction (same values, slower). On CPU "
        f"torch.compile needs a C++ compiler. The error was: {error!r}",
        RuntimeWarning,
        stacklevel=3,
    )


def compiled_flipped_log_factors(
    sigmoid: torch.Tensor, tables: torch.Tensor, change: torch.Tensor, group: int
) -> torch.Tensor | None:
    """The flipped reduction ``[n, *slices]`` from ``s`` ``[*batch, P]``, the tables and
    ``change`` ``[n, *slices]`` through the compiled kernel, or ``None`` (the caller then
    takes the eager reduction) on a shape's first call, past :data:`MAX_KERNELS` shapes
    and where compiling has failed."""
    global _compiled
    if _compiled is None:
        _compiled = _compile()
    if _compiled is False:
        return None
    slices = torch.broadcast_shapes(change.shape[1:], sigmoid.shape[:-1])
    num, width = change.shape[0], sigmoid.shape[-1]
    flat_sigmoid = sigmoid.expand(slices + (width,)).reshape(-1, width)
    flat_change = change.expand((num,) + slices).reshape(num, -1)
    key = (flat_sigmoid.shape, tables.shape, flat_change.shape, group, tables.dtype, tables.device)
    if key not in _kernels:
        _calls[key] = _calls.get(key, 0) + 1
        if _calls[key] < 2 or len(_kernels) >= MAX_KERNELS:
            return None
        _kernels.add(key)
    try:
        total = _compiled(flat_sigmoid, tables, flat_change, group)
    except Exception as error:  # a shape compiles on its first call here
        _compiled = False
        _warn(error)
        return None
    return total.reshape((num,) + slices)
