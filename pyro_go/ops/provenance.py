"""Lean provenance tracking: which sampled values a tensor was computed from.

The same idea as :mod:`pyro.ops.provenance` (Wingate et al. 2011), used by
:class:`~pyro.infer.TraceGraph_ELBO`, with a cheaper ``__torch_function__``: arguments
are scanned directly instead of through pytree flattening, which makes tracking about
five times cheaper per op.  ``TraceGO_ELBO`` tracks every discrete guide value through
the model on every step, so this cost sits on its hot path.

A tracked value turned into Python data (``bool``, ``int``, ``float``, ``.item()``,
``.tolist()``, an index or a ``range`` bound) may steer the program's control flow, which
provenance through tensor ops cannot follow: :func:`watch_scalar_reads` reports the
provenance of every such read to a listener
(:class:`~pyro_go.poutine.scalar_read_messenger.ScalarReadMessenger`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from pyro.util import warn_if_inf, warn_if_nan


class ProvenanceTensor(torch.Tensor):
    """A tensor that carries ``_provenance``, a frozenset of site names, through ops.
    The result of any op has the union of its inputs' provenance."""

    _t: torch.Tensor
    _provenance: frozenset

    @staticmethod
    def __new__(cls, data: torch.Tensor, provenance: frozenset):
        tracked = data.as_subclass(cls)
        tracked._t = data
        tracked._provenance = provenance
        return tracked

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        found: list[frozenset] = []
        args = _unwrap(args, found)
        kwargs = {key: _unwrap(value, found) for key, value in kwargs.items()} if kwargs else {}
        result = func(*args, **kwargs)
        if not found:
            return result
        provenance = found[0] if len(found) == 1 else frozenset().union(*found)
        if _listeners and func in SCALAR_READS and not _is_validation_read():
            for listener in _listeners:
                listener(provenance)
        return _wrap(result, provenance)


#: tensor methods that turn a value into Python data, which may steer control flow
SCALAR_READS = frozenset(
    getattr(torch.Tensor, name)
    for name in (
        "__bool__",
        "__int__",
        "__float__",
        "__complex__",
        "__index__",
        "__format__",
        "__array__",
        "item",
        "tolist",
        "numpy",
    )
)

#: functions whose reads only validate (they pass or raise): argument and support
#: checks of distributions, and Pyro's NaN/inf warnings
_VALIDATION_CODE = frozenset(
    {
        torch.distributions.Distribution.__init__.__code__,
        warn_if_nan.__code__,
        warn_if_inf.__code__,
    }
)

_listeners: list[Callable[[frozenset], None]] = []


def _is_validation_read() -> bool:
    """Whether the Python code that made this read only validates."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name == "__torch_function__":
        frame = frame.f_back  # subclasses that extend ``__torch_function__``
    if frame is None:
        return False
    code = frame.f_code
    return code in _VALIDATION_CODE or code.co_name == "_validate_sample"


@contextmanager
def watch_scalar_reads(listener: Callable[[frozenset], None]) -> Iterator[None]:
    """While active, ``listener(provenance)`` is called whenever a tracked value is read
    as Python data (see :data:`SCALAR_READS`), except by validation code."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _unwrap(value, found: list):
    if isinstance(value, ProvenanceTensor):
        found.append(value._provenance)
        return value._t
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_unwrap(part, found) for part in value)
    return value


def _wrap(value, provenance: frozenset):
    if type(value) is torch.Tensor:
        return ProvenanceTensor(value, provenance)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_wrap(part, provenance) for part in value)
    return value


def track(value: torch.Tensor, provenance: frozenset) -> torch.Tensor:
    """Start tracking ``value`` (added to any provenance it already has)."""
    if isinstance(value, ProvenanceTensor):
        return ProvenanceTensor(value._t, value._provenance | provenance)
    return ProvenanceTensor(value, provenance)


def strip(value):
    """The plain tensor under a tracked one (anything else is returned as is)."""
    return value._t if isinstance(value, ProvenanceTensor) else value


def provenance_of(value) -> frozenset:
    """The names ``value`` was computed from (empty for untracked values)."""
    return value._provenance if isinstance(value, ProvenanceTensor) else frozenset()
