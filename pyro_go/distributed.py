"""Data-parallel SVI across processes with :mod:`torch.distributed`: the parameters that
:class:`~torch.nn.parallel.DistributedDataParallel` cannot see, kept in step on every rank.

DDP synchronises the parameters of the module it wraps.  Pyro's param store can hold
more: ``pyro.param`` sites, and the control-variate parameters of
:class:`~pyro_go.TraceRELAX_ELBO` (``"<site>.relax_eta"``, its networks, ...), which are
created lazily on the first step, on each rank from that rank's random state.
:class:`DistributedOptim` wraps a :class:`~pyro.optim.PyroOptim` the way Pyro's
:class:`~pyro.optim.HorovodOptimizer` does, on :mod:`torch.distributed` instead of
Horovod: it averages the gradients of the parameters it steps over the ranks, and a
parameter it meets for the first time with different values on different ranks takes
rank 0's value and rank 0's gradient (the other ranks computed theirs at their own
initial values), so that every rank holds the same parameters after every step.

With every plate that subsamples the data scaled to the *global* dataset size
(``pyro.plate("data", size=num_data, subsample=local_indices)``), each rank's loss is an
unbiased estimate of the whole ELBO, and the average over ``W`` ranks of local batches
of ``B`` is the estimate of one process on the union batch of ``W·B``, sample for
sample.  RELAX trains its control variate on each rank's single-sample variance
``Σ ĝ_l²`` (Grathwohl et al. 2018, eq. 10); averaged over ranks, its gradient is ``W``
times that of ``Σ ĝ_l²`` of the synchronised estimate, the same direction (scale-free
optimizers such as Adam take the same step).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim


def is_distributed() -> bool:
    """Whether a :mod:`torch.distributed` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def _flat_groups(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor)
    return groups


@torch.no_grad()
def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0, group=None) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (one collective per
    dtype).  Every rank must pass the same tensors in the same order."""
    for same_dtype in _flat_groups(list(tensors)).values():
        flat = torch.cat([tensor.detach().reshape(-1) for tensor in same_dtype])
        dist.broadcast(flat, src=src, group=group)
        for tensor, value in zip(
            same_dtype, flat.split([t.numel() for t in same_dtype]), strict=True
        ):
            tensor.copy_(value.view_as(tensor))


@torch.no_grad()
def average_gradients_(params: Iterable[torch.Tensor], group=None) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (a missing gradient
    counts as zero).  Every rank must pass the same parameters in the same order."""
    params = list(params)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    world_size = dist.get_world_size(group)
    for same_dtype in _flat_groups(grads).values():
        flat = torch.cat([grad.reshape(-1) for grad in same_dtype])
        dist.all_reduce(flat, group=group)
        flat /= world_size
        for grad, value in zip(
            same_dtype, flat.split([g.numel() for g in same_dtype]), strict=True
        ):
            grad.copy_(value.view_as(grad))
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad


@torch.no_grad()
def _agree(tensors: list[torch.Tensor], group=None) -> bool:
    """Whether every rank holds rank 0's values of ``tensors``."""
    reference = [tensor.detach().clone() for tensor in tensors]
    broadcast_(reference, group=group)
    differs = torch.tensor(
        [float(any(not torch.equal(a, b) for a, b in zip(reference, tensors, strict=True)))]
    )
    dist.all_reduce(differs, op=dist.ReduceOp.MAX, group=group)
    return not differs.item()


class DistributedOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` that keeps its parameters identical on every rank
    of a :mod:`torch.distributed` process group: before each step it averages their
    gradients over the ranks.  A parameter it has not stepped before is checked first:
    if some rank holds a different value (lazily created, e.g. RELAX's default network,
    from that rank's random state), every rank takes rank 0's value and rank 0's
    gradient for this step.  Without an initialised process group it is the wrapped optimizer.

    Use it as :class:`~pyro.infer.SVI`'s optimizer (any ELBO, including
    :class:`~pyro_go.TraceGO_ELBO` and :class:`~pyro_go.TraceRELAX_ELBO`), or as
    ``TraceRELAX_ELBO(control_variate_optim=...)`` when DDP and a
    :class:`torch.optim.Optimizer` train the model and guide (the Lightning pattern).
    Every rank must step the same parameters (the same model structure on every rank).

    :param pyro_optim: the optimizer to wrap, e.g. ``pyro.optim.Adam({"lr": 1e-3})``.
    :param group: the process group (default: the world).
    """

    def __init__(self, pyro_optim: PyroOptim, group=None) -> None:
        super().__init__(
            pyro_optim.pt_optim_constructor, pyro_optim.pt_optim_args, pyro_optim.pt_clip_args
        )
        self.group = group

    def __call__(self, params, *args, **kwargs) -> None:
        if is_distributed():
            # the same order on every rank: by param-store name, as HorovodOptimizer does
            names = pyro.get_param_store().param_name
            params = sorted(params, key=lambda p: names(p) or "")
            new = [p for p in params if p not in self.optim_objs]
            if new and not _agree(new, self.group):
                # their gradients were computed at each rank's own initial values
                broadcast_(new, group=self.group)
                grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in new]
                broadcast_(grads, group=self.group)
                for param, grad in zip(new, grads, strict=True):
                    param.grad = grad
                fresh = {id(p) for p in new}
                average_gradients_([p for p in params if id(p) not in fresh], self.group)
            else:
                average_gradients_(params, self.group)
        super().__call__(params, *args, **kwargs)
