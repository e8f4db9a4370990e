"""Linear layers absorb few-coordinate perturbations without a matrix product.

In a perturbation replay (:mod:`pyro_go.infer.perturbation`) stack entry ``j`` of a
Bernoulli or count site differs from the sample ``z`` in one coordinate ``i_j`` of its
last dim, by ``d_j`` (per plate slice).  A linear map then gives
``L(z + d_j e_{i_j}) = L(z) + d_j W[:, i_j]``: the GO authors' trick for the discrete VAE
(appendix I, step 1 of the Ξ procedure), applied here generically to any
``torch.nn.functional.linear`` or ``matmul`` whose input *is* the stacked value.  One
product for the base sample replaces the product over the whole stack.

The stacks are :class:`~pyro_go.ops.deferred.DeferredTensor` values: their structure
(:class:`SparseStack`, :class:`OneHotStack`) is all the fast paths read, and the dense
stack is computed only if the model uses it some other way, which keeps every model
correct, just not faster.  A linear layer's output is deferred in turn.

A one-hot Categorical site ``[..., N, K]`` changes, in entry ``j``, the category of
variable ``v_j`` from ``old`` to ``new`` (per slice).  Its linear consumer usually sees
it flattened to ``[..., N·K]``: the flattening (``reshape``, ``view``, ``flatten``) of a
deferred :class:`OneHotStack` is deferred in turn, as a :class:`SparseStack` with the
two changed coordinates ``v_j K + old`` (−1) and ``v_j K + new`` (+1) per slice, so the
layer adds the difference of two columns of ``W``.  Any other use of a stacked value is
computed as usual.

When a binary site's one-coordinate stack goes through a linear layer, the output is
the same logits ``h`` shifted by ``±W[:, i_j]`` (a :class:`ShiftedOutput`); if those go
straight into an observed ``Bernoulli(logits=...)``, :func:`shifted_bernoulli_log_prob`
evaluates the flipped likelihood in closed form, without a ``softplus`` per entry and
without the dense logits ``[n, *batch, out]``, in blocks of entries that fit in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch.overrides import TorchFunctionMode

from pyro_go.infer.fused_flips import CompiledReduction
from pyro_go.ops.deferred import DeferredTensor, structure_of


@dataclass
class SparseStack:
    """The structure of a stack ``[n, *pad, *batch, D]`` whose entries are ``base`` plus
    ``delta`` at coordinates ``index`` of the last dim.

    Either one coordinate per entry shared by all slices (``index`` ``[n]``, ``delta``
    ``[n, *pad, *batch]``) or ``k`` coordinates per slice (``index`` and ``delta``
    ``[n, *pad, *batch, k]``).  A shared-coordinate stack of a discrete site may also
    name the value each entry takes there: ``alternatives[alternative[j]]`` at
    ``index[j]`` (``alternatives`` ``[A, *base.shape]``), which lets the site's own
    log-densities skip the stack (:func:`one_coordinate_log_prob`).
    """

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
    """The structure of a one-hot stack ``[n, *pad, *batch, N, K]`` whose entry ``j``
    moves variable ``variable[j]`` from category ``old`` to ``new`` (``[n, *pad, *batch]``)
    in each slice.  Becomes a :class:`SparseStack` when its last two dims are flattened."""

    base: torch.Tensor
    variable: torch.Tensor
    old: torch.Tensor
    new: torch.Tensor

    def flattened(self) -> SparseStack:
        num_categories = self.base.shape[-1]
        offset = (self.variable * num_categories).reshape((-1,) + (1,) * (self.old.dim() - 1))
        index = torch.stack([offset + self.old, offset + self.new], dim=-1)
        changed = (self.old != self.new).to(self.base.dtype)
        delta = torch.stack([-changed, changed], dim=-1)
        return SparseStack(self.base.flatten(-2), index, delta)


@dataclass
class ShiftedOutput:
    """The structure of a linear layer's output ``[n, *pad, *batch, out]`` on a binary
    one-coordinate :class:`SparseStack`: ``base`` (``[*batch, out]``, shared by all
    entries) plus ``change[j] · columns[index[j]]`` (``change`` ``[n, *pad, *batch]`` in
    ``{−1, 0, 1}``)."""

    base: torch.Tensor
    change: torch.Tensor
    index: torch.Tensor
    columns: torch.Tensor


#: most factors multiplied before one ``log`` in :func:`shifted_bernoulli_log_prob`
PRODUCT_GROUP = 8
#: a product of factors, each between 1 and ``e^{±W_p}``, is taken only while
#: ``Σ_p |W_p| <`` this (``e^{±80}`` fits float32): :func:`product_group` bounds the sum
#: by ``g·max|W|``, :func:`aligned_row_width` takes it row by row
PRODUCT_LOG_BOUND = 80.0
#: floats per SIMD vector (AVX-512) that :func:`aligned_row_width` sizes the compiled
#: reduction's rows for; a multiple of AVX2's 8, so rows fit that too
VECTOR_WIDTH = 16
#: elements of ``[entries, *batch, P]`` per block of :func:`_flipped_log_factors`
#: (measured fastest on a 2 MB-L2 core: 2^17 and 2^19 were 10-20% slower)
BLOCK_ELEMENTS = 2**18


def elementwise_base(fn):
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
    """``fn.log_prob`` of the stack from the log-densities of the base value and of the
    alternatives plus a correction at each entry's coordinate, when ``fn`` is elementwise
    over the last dim and the stack names its alternatives; else ``None``.  The prior and
    guide half of appendix I's trick: ``log q(z with z_i flipped) = log q(z) − log q_i(z_i)
    + log q_i(1 − z_i)``, without a log-density over the whole stack."""
    found = elementwise_base(fn)
    if found is None or stack.alternatives is None:
        return None
    base_fn, reinterpreted = found
    old = base_fn.log_prob(stack.base)  # [*shape]
    if isinstance(base_fn, torch.distributions.Bernoulli):
        # log p(a) − log p(z) = (a − z)·logit: the softplus terms cancel
        logit_at = base_fn.logits.expand(old.shape).index_select(-1, stack.index)
        correction = stack.delta * logit_at.movedim(-1, 0).reshape(stack.delta.shape)
    else:
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


def product_group(largest: float) -> int:
    """Factors per ``log``: the largest power of two up to :data:`PRODUCT_GROUP` whose
    products of factors in ``[e^{−largest}, e^{largest}]`` stay within
    ``e^{±PRODUCT_LOG_BOUND}``.
    Graded, so that one large weight late in training costs a little speed, not the
    whole grouping."""
    group = PRODUCT_GROUP
    while group > 1 and group * largest >= PRODUCT_LOG_BOUND:
        group //= 2
    return group


def _log_product(factor: torch.Tensor, group: int) -> torch.Tensor:
    """``Σ log factor`` over the last dim, one ``log`` per ``group`` factors: the dim is
    split into ``group`` contiguous rows, whose product (over the row dim, so it
    vectorises along the rows) is taken first."""
    if group == 1:
        return factor.log().sum(-1)
    width = factor.shape[-1]
    whole = width - width % group
    rows = factor[..., :whole].view(factor.shape[:-1] + (group, whole // group))
    total = rows.prod(-2).log_().sum(-1)
    if whole < width:
        total = total + factor[..., whole:].prod(-1).log()
    return total


def _flip_tables(chosen: torch.Tensor) -> torch.Tensor:
    """``[e^{W} − 1; e^{−W} − 1]`` (``[2n, P]``) for the columns ``chosen`` ``[n, P]``.

    One ``exp`` and a reciprocal instead of two ``expm1`` (which PyTorch does not
    vectorise on CPU: six times slower).  ``e^W − 1`` loses no accuracy that matters
    here: a table value enters only as ``1 + s·t``, whose float rounding is already
    ``2^{−24}``, the size of the cancellation error in ``e^W − 1``."""
    num = chosen.shape[0]
    tables = chosen.new_empty((2 * num,) + chosen.shape[1:])
    torch.exp(chosen, out=tables[:num])
    torch.reciprocal(tables[:num], out=tables[num:])
    return tables.sub_(1)


def _table_rows(change: torch.Tensor) -> torch.Tensor:
    """The row of :func:`_flip_tables`' ``[2n, P]`` that each entry and slice reads:
    ``j`` for ``e^{W[:, i_j]} − 1``, ``n + j`` for ``e^{−W[:, i_j]} − 1``."""
    num = change.shape[0]
    rows = torch.arange(num, device=change.device).reshape((num,) + (1,) * (change.dim() - 1))
    return rows + num * (change < 0)


def _flip_differences(
    h: torch.Tensor,
    value: torch.Tensor,
    chosen: torch.Tensor,
    tables: torch.Tensor,
    change: torch.Tensor,
    grouping: int,
    log_factors: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """``Σ_p [log p(x_p | h_p + change·W[p, i_j]) − log p(x_p | h_p)]`` ``[n, *slices]``
    for logits ``h`` and data ``value`` ``[*batch, P]``, the columns
    ``chosen = W[:, i_j]ᵀ`` ``[n, P]``, their :func:`_flip_tables` and ``change``
    ``[n, *slices]`` (entries with change 0 get a meaningless value): ``change·x·W[:, i_j]``
    minus the flipped log-factors, which ``log_factors`` sums: by default
    :func:`_flipped_log_factors`, in cache-sized blocks with products of ``grouping``
    factors; :func:`_whole_log_factors` in rows of ``grouping``."""
    log_factor = (log_factors or _flipped_log_factors)(torch.sigmoid(h), tables, change, grouping)
    # Σ_p x_p · W[p, i_j] for every entry, as one product
    x_dot = torch.matmul(value, chosen.t()).movedim(-1, 0)
    x_dot = x_dot.reshape(x_dot.shape[:1] + (1,) * (change.dim() - x_dot.dim()) + x_dot.shape[1:])
    return change * x_dot - log_factor


def aligned_row_width(chosen: torch.Tensor) -> int | None:
    """The row width ``w`` of :func:`_whole_log_factors` for the columns ``chosen``
    ``[n, P]``: the smallest of ``VECTOR_WIDTH·2^m`` for which every product it forms
    stays within ``e^{±PRODUCT_LOG_BOUND}``, or ``None`` where not even rows of ``w ≥ P``
    (one factor per ``log``) keep it.

    A factor ``1 + s·(e^{±W[p, i]} − 1)`` lies between 1 and ``e^{±W[p, i]}``, so the
    product down the rows at position ``q`` is bounded by
    ``|log Π_j factor_{j·w+q}| ≤ Σ_j |W[j·w+q, i]|``, which this checks for every column
    and position: tighter than ``(factors per log)·max|W|``, so that, for the discrete
    VAE, rows of 16 (49 factors per ``log``) hold through training (the bound grew to 27
    in 20 000 steps)."""
    pixels = chosen.shape[-1]
    magnitude = chosen.t().abs()  # [P, n]: a transposed weight is read in memory order
    width = VECTOR_WIDTH
    while True:
        rows = -(-pixels // width)
        whole = (rows - 1) * width
        sums = magnitude[:whole].reshape(rows - 1, width, magnitude.shape[1]).sum(0)
        sums[: pixels - whole] += magnitude[whole:]
        if float(sums.max()) < PRODUCT_LOG_BOUND:
            return width
        if rows == 1:
            return None
        width *= 2


def _whole_log_factors(
    sigmoid: torch.Tensor, tables: torch.Tensor, change: torch.Tensor, width: int
) -> torch.Tensor:
    """:func:`_flipped_log_factors` in one expression for :func:`_whole_flip_differences`:
    each entry's ``P`` factors, padded with ones (``s = t = 0``) to ``g·width``, are taken
    as ``g`` rows of ``width`` and multiplied down the rows, one ``log`` per position
    (:func:`aligned_row_width`).  Rows a whole number of vectors wide leave the compiled
    loop no ragged tail, which :func:`_log_product`'s products of 8 (rows of 98 at the
    VAE's ``P = 784``) do not."""
    pixels = sigmoid.shape[-1]
    rows = -(-pixels // width)
    if rows * width > pixels:
        sigmoid = F.pad(sigmoid, (0, rows * width - pixels))
        tables = F.pad(tables, (0, rows * width - pixels))
    factor = 1 + sigmoid * tables[_table_rows(change)]
    return factor.view(factor.shape[:-1] + (rows, width)).prod(-2).log().sum(-1)


def _whole_flip_differences(h, value, chosen, change, width) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_flip_differences` for ``h``, ``value`` ``[S, P]`` and ``change``
    ``[n, S]``, with the tables, in one expression (rows of ``width``,
    :func:`_whole_log_factors`): what :data:`_compiled_differences` compiles into one
    graph whose reduction never forms the ``[n, S, P]`` factors.  The tables are
    returned too, which makes the compiled graph store them once instead of recomputing
    an ``exp`` for every factor it reads; the graph computes them in any layout of
    ``chosen`` (a transposed weight: strided eager ``exp`` was three times slower)."""
    exp = torch.exp(chosen)
    tables = torch.cat([exp - 1, 1 / exp - 1])
    differences = _flip_differences(h, value, chosen, tables, change, width, _whole_log_factors)
    return differences, tables


#: the flip differences compiled per shape (``TraceGO_ELBO(compile_likelihood=True)``)
_compiled_differences = CompiledReduction(_whole_flip_differences)


def _flipped_log_factors(
    sigmoid: torch.Tensor, tables: torch.Tensor, change: torch.Tensor, group: int
) -> torch.Tensor:
    """``Σ_p log(1 + s_p·(e^{δ_p} − 1))`` with ``δ = change·W[:, i]``: ``[n, *slices]``
    from ``s`` ``[*batch, P]``, the tables ``[e^{W[:, i_j]} − 1; e^{−W[:, i_j]} − 1]``
    ``[2n, P]`` (:func:`_flip_tables`) and ``change`` ``[n, *slices]`` (entries with
    change 0 get a meaningless value); logs of products of ``group`` factors
    (:func:`_log_product`).

    Entries are taken in blocks of :data:`BLOCK_ELEMENTS` elements, in one reused buffer:
    each block's factors are gathered as whole rows of the tables, turned into
    ``1 + s·t`` and multiplied down while they are in cache."""
    num, width = change.shape[0], tables.shape[1]
    slices = torch.broadcast_shapes(change.shape[1:], sigmoid.shape[:-1])
    per_entry = slices.numel()
    rows = _table_rows(change).expand((num,) + slices).flatten()
    block = max(1, BLOCK_ELEMENTS // (per_entry * width)) * per_entry
    buffer = tables.new_empty((min(block, rows.shape[0]), width))
    one = sigmoid.new_ones(())
    pieces = []
    for start in range(0, rows.shape[0], block):
        chosen = rows[start : start + block]
        factor = torch.index_select(tables, 0, chosen, out=buffer[: chosen.shape[0]])
        factor = factor.view((-1,) + slices + (width,))
        pieces.append(_log_product(torch.addcmul(one, sigmoid, factor, out=factor), group))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def shifted_bernoulli_log_prob(
    fn, value: torch.Tensor, compiled: bool = False, record: ShiftedOutput | None = None
) -> torch.Tensor | None:
    """``fn.log_prob(value)`` for an elementwise ``Bernoulli(logits=h + d·W[:, i])`` whose
    logits are a deferred :class:`ShiftedOutput` (``d ∈ {−1, 0, 1}``), else ``None``:
    ``log p(x | h)`` plus :func:`bernoulli_flip_differences` over an event dim (its
    reduction compiled if ``compiled``), the elementwise closed form without one.
    Weights so large that ``e^{|W|}`` overflows return ``None``, which leaves the exact
    dense log-density.  ``record`` stands in for the structure of ``fn``'s logits where
    those are the plain base logits (a recorded linear output,
    :mod:`pyro_go.infer.recorded_linear`).  The NumPyro twin is
    :func:`numpyro_go.infer.perturbation.shifted_bernoulli_log_prob`."""
    found = elementwise_base(fn)
    if found is None or not isinstance(found[0], torch.distributions.Bernoulli):
        return None
    base_fn, reinterpreted = found
    if record is None:
        # a Bernoulli made from probs has no logits attribute until asked
        record = structure_of(base_fn.__dict__.get("logits"))
    if not isinstance(record, ShiftedOutput):
        return None
    h, change = record.base, record.change
    if h.shape != value.shape:
        h, value = torch.broadcast_tensors(h, value)
    chosen = record.columns[record.index]  # [n, P]
    if reinterpreted == 0:
        tables = _checked_flip_tables(chosen)
        if tables is None:
            return None
        old = -F.binary_cross_entropy_with_logits(h, value, reduction="none")
        lead = chosen.shape[:1] + (1,) * (change.dim() - 1) + chosen.shape[1:]
        change = change.unsqueeze(-1)
        up, down = tables.chunk(2)
        table = torch.where(change > 0, up.reshape(lead), down.reshape(lead))
        factor = torch.addcmul(h.new_ones(()), torch.sigmoid(h), table)
        flipped = old + change * chosen.reshape(lead) * value - torch.log(factor)
        return torch.where(change != 0, flipped, old)
    differences = bernoulli_flip_differences(h, value, chosen, change, compiled)
    if differences is None:
        return None
    old = -F.binary_cross_entropy_with_logits(h, value, reduction="none").sum(-1)
    total = torch.where(change != 0, old + differences, old)
    if reinterpreted > 1:
        total = total.sum(tuple(range(-(reinterpreted - 1), 0)))
    return total


def _largest_magnitude(chosen: torch.Tensor) -> float | None:
    """``max|chosen|``, or ``None`` where ``e^{max|chosen|}`` overflows.  A transposed
    matrix is read in memory order (a strided reduction was five times slower)."""
    if chosen.dim() == 2 and chosen.t().is_contiguous():
        chosen = chosen.t()
    lowest, highest = torch.aminmax(chosen)
    largest = float(max(-lowest, highest))
    return None if largest >= math.log(torch.finfo(chosen.dtype).max) else largest


def _checked_flip_tables(chosen: torch.Tensor) -> torch.Tensor | None:
    """:func:`_flip_tables` of ``chosen``, or ``None`` where ``e^{|W|}`` overflows."""
    return None if _largest_magnitude(chosen) is None else _flip_tables(chosen)


def bernoulli_flip_differences(
    h: torch.Tensor,
    value: torch.Tensor,
    chosen: torch.Tensor,
    change: torch.Tensor,
    compiled: bool = False,
) -> torch.Tensor | None:
    """``Σ_p [log p(x_p | h_p + change_j·chosen[j, p]) − log p(x_p | h_p)]`` for an
    elementwise ``Bernoulli(logits=h)`` over the last dim: ``[n, *slices]`` from ``h``
    and ``value`` ``[*batch, P]``, the columns ``chosen`` ``[n, P]`` (``W[:, i_j]ᵀ``)
    and ``change`` ``[n, *slices]`` in ``{−1, 1}`` (entries with change 0 get a
    meaningless value); ``None`` where ``e^{|W|}`` overflows.

    Elementwise ``log p(x | h + δ) − log p(x | h) = x·δ − log(1 + s·(e^δ − 1))`` with
    ``s = σ(h)``; ``e^{±W} − 1`` is one table for all entries, so an entry costs a
    multiply-add per element instead of a ``softplus``, and the logarithms are taken of
    products of up to :data:`PRODUCT_GROUP` factors (each in ``[e^{−|W|}, e^{|W|}]``;
    fewer as ``max|W|`` grows, so that no product leaves ``e^{±80}``:
    :func:`product_group`), in cache-sized blocks (:func:`_flipped_log_factors`), so
    that no ``[n, *batch, P]`` tensor is ever formed.  ``compiled=True`` takes the sum
    through one ``torch.compile`` kernel per shape (:mod:`pyro_go.infer.fused_flips`),
    with products down rows a whole number of SIMD vectors wide
    (:func:`aligned_row_width`).
    The likelihood half of appendix I's trick (eqs. 34–36); more accurate than
    differencing two full likelihoods."""
    if compiled:
        width = aligned_row_width(chosen)
        if width is not None:
            differences = _compiled_differences(h, value, chosen, change, width)
            if differences is not None:
                return differences
    largest = _largest_magnitude(chosen)
    if largest is None:
        return None
    return _flip_differences(h, value, chosen, _flip_tables(chosen), change, product_group(largest))


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
_FLATTENS = (
    torch.reshape,
    torch.Tensor.reshape,
    torch.Tensor.view,
    torch.flatten,
    torch.Tensor.flatten,
)


def linear_layer(func, args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(W, b)`` (``W`` ``[out, in]``) when ``func(*args, **kwargs)`` is
    ``F.linear(x, W, b)`` or ``x @ M`` (``W = Mᵀ``, no ``b``) with a matrix; else ``None``."""
    if func is F.linear:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        return (weight, bias) if weight.dim() == 2 else None
    if func in _MATMULS and len(args) > 1 and torch.is_tensor(args[1]) and args[1].dim() == 2:
        return args[1].t(), None
    return None


def _keeps_shape(tensor: torch.Tensor, args, kwargs) -> bool:
    """Whether ``tensor.expand(*args, **kwargs)`` has ``tensor``'s own shape."""
    sizes = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
    return len(sizes) == tensor.dim() and all(
        size in (-1, own) for size, own in zip(sizes, tensor.shape, strict=True)
    )


class AbsorbLinear(TorchFunctionMode):
    """While active, ``F.linear(x, W, b)`` and ``x @ W`` on a deferred stack (a
    :class:`~pyro_go.ops.deferred.DeferredTensor` whose structure is a
    :class:`SparseStack`) take the fast path and return a deferred output, a binary
    one-coordinate stack's with a :class:`ShiftedOutput` structure; flattening a deferred
    :class:`OneHotStack` defers too; shape-preserving ``expand`` and ``broadcast_tensors``
    (what distributions do to their parameters) keep deferred tensors deferred.  Any
    other operation computes the dense value.  ``hits`` counts the products absorbed and
    ``created`` holds the deferred tensors made."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.created: list[DeferredTensor] = []

    def _linear(self, stacked, stack: SparseStack, weight: torch.Tensor, bias) -> torch.Tensor:
        self.hits += 1
        base = F.linear(stack.base, weight, bias)
        columns = weight.t()
        structure = None
        if stack.binary and stack.index.dim() == 1:
            structure = ShiftedOutput(base, stack.delta, stack.index, columns)
        out = DeferredTensor(
            stacked.shape[:-1] + weight.shape[:1],
            base,
            lambda: base + stack.columns_times_delta(columns),
            structure,
        )
        self.created.append(out)
        return out

    def _flatten(self, func, stacked, stack: OneHotStack, args, kwargs):
        """A deferred flattening of a one-hot stack's last two dims, or ``None``."""
        meta = torch.empty(stacked.shape, device="meta")
        shape = func(meta, *args[1:], **kwargs).shape
        if shape != stacked.shape[:-2] + (stacked.shape[-2:].numel(),):
            return None
        flat = DeferredTensor(
            shape,
            stack.base,
            lambda: func(stacked.dense(), *args[1:], **kwargs),
            stack.flattened(),
        )
        self.created.append(flat)
        return flat

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.broadcast_tensors and any(isinstance(a, DeferredTensor) for a in args):
            shape = torch.broadcast_shapes(*(a.shape for a in args))
            if all(a.shape == shape for a in args if isinstance(a, DeferredTensor)):
                return tuple(a if a.shape == shape else a.expand(shape) for a in args)
        stacked = args[0] if args else None
        if not isinstance(stacked, DeferredTensor):
            return func(*args, **kwargs)
        if func is torch.Tensor.expand and _keeps_shape(stacked, args[1:], kwargs):
            return stacked
        stack = stacked.structure
        if isinstance(stack, OneHotStack) and func in _FLATTENS:
            flat = self._flatten(func, stacked, stack, args, kwargs)
            if flat is not None:
                return flat
        if isinstance(stack, SparseStack):
            layer = linear_layer(func, args, kwargs)
            if layer is not None:
                return self._linear(stacked, stack, *layer)
        return func(*args, **kwargs)
