"""``D_y f`` for the discrete leaf sites of a guide, by ``jax.vmap`` over perturbations
(the JAX twin of :mod:`pyro_go.infer.perturbation`).

For a discrete guide site ``s`` the GO estimator needs, for every element ``v`` and
alternative value ``a``, ``Δ_{a,v} = f(y with y_v := a) − f(y)`` where
``f = log p(x, z) − log q(z)`` (Cong et al. 2019, eq. 9; appendix I, eqs. 34–36).

* **Plates.**  A plate declares conditional independence, so changing element ``v`` in
  every slice of the site's plates at once and summing ``f``'s terms down to those plates
  yields the differences of all slices from one evaluation (appendix I's Ξ trick, made
  generic).  A plate counts as *coupled* for ``s`` when some model term that depends on
  ``s`` (by provenance) lies outside it, since that term mixes slices; the positions of
  coupled dims and event dims are perturbed one per evaluation.
* **vmap.**  The model is replayed with every latent value fixed and only ``s`` changed,
  as a function of the stack index; ``jax.vmap`` runs all evaluations at once (or
  ``jax.lax.map`` in chunks of ``chunk_size``), so the model need not broadcast over an
  extra dim and the whole loss stays ``jit``-able.  Index 0 is the unperturbed sample, so
  every difference is taken between numbers computed by the same kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Literal

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.lax import stop_gradient
from numpyro.handlers import seed, substitute, trace

from numpyro_go.distributions.registry import unwrap_distribution
from numpyro_go.distributions.rules import DiscreteRule
from numpyro_go.nn import OneCoordinateStack, absorbing, shifted_output
from numpyro_go.sharding import map_sharded, perturbation_axis


def _sum_to_kept(log_prob: jax.Array, kept_dims: frozenset[int], ndim: int) -> jax.Array:
    """Sum ``log_prob`` over every dim whose negative index is not in ``kept_dims`` and
    return it with ``ndim`` dims (size 1 where summed), right-aligned."""
    log_prob = jnp.asarray(log_prob)
    summed = tuple(i for i in range(log_prob.ndim) if i - log_prob.ndim not in kept_dims)
    log_prob = jnp.sum(log_prob, axis=summed, keepdims=True)
    extra = log_prob.ndim - ndim
    if extra > 0:
        return log_prob.reshape(log_prob.shape[extra:])
    return log_prob.reshape((1,) * -extra + log_prob.shape)


@dataclass
class LeafLayout:
    """One discrete leaf site and the layout of its perturbations.

    ``kept_dims`` are the (negative) batch dims of the site that belong to a plate in
    which every dependent model term lies; the site's other element dims are coupled and
    their ``num_coupled`` positions are perturbed one per evaluation, for each of the
    rule's ``num_alternatives`` alternatives.
    """

    name: str
    rule: DiscreteRule
    fn: object
    value: jax.Array
    scale: jax.Array | float | None
    kept_dims: frozenset[int]
    batch_ndim: int = field(init=False)
    num_coupled: int = field(init=False)
    num_alternatives: int = field(init=False)

    def __post_init__(self) -> None:
        self.batch_ndim = len(self.fn.batch_shape)
        self.num_coupled = prod(
            size
            for dim, size in enumerate(self.value.shape)
            if dim - self.batch_ndim not in self.kept_dims
        )
        self.num_alternatives = self.rule.num_alternatives(self.base_fn)

    @property
    def base_fn(self):
        return unwrap_distribution(self.fn)

    @property
    def num_entries(self) -> int:
        return self.num_alternatives * self.num_coupled

    def coupled_index(self) -> jax.Array:
        """Flat coupled position of each element, broadcastable to the value's shape."""
        shape = [
            1 if dim - self.batch_ndim in self.kept_dims else size
            for dim, size in enumerate(self.value.shape)
        ]
        return jnp.arange(self.num_coupled).reshape(shape)

    def perturbed(self, alternatives: jax.Array, entry: jax.Array) -> jax.Array:
        """The value at stack index ``entry`` (0 = unperturbed; ``1 + a·C + c`` sets the
        elements at coupled position ``c`` to alternative ``a``)."""
        local = jnp.maximum(entry - 1, 0)
        chosen = alternatives[local // self.num_coupled]
        selected = (self.coupled_index() == local % self.num_coupled) & (entry > 0)
        return jnp.where(selected, chosen, self.value)

    @property
    def perturbs_last_dim_only(self) -> bool:
        """Whether every entry changes one coordinate of the last dim (the same one in
        all plate slices), so that :func:`numpyro_go.nn.linear` can absorb it."""
        last = self.value.ndim - 1
        kept = [dim - self.batch_ndim in self.kept_dims for dim in range(self.value.ndim)]
        return last >= 0 and all(kept[:last]) and not kept[last]

    def one_coordinate_stack(
        self, alternatives: jax.Array, entry: jax.Array, value: jax.Array
    ) -> OneCoordinateStack:
        """The structure of ``value = perturbed(alternatives, entry)`` for a site that
        :attr:`perturbs_last_dim_only`."""
        local = jnp.maximum(entry - 1, 0)
        coordinate, alternative = local % self.num_coupled, local // self.num_coupled
        chosen = jnp.take(alternatives, coordinate, axis=-1)[alternative]
        current = jnp.take(self.value, coordinate, axis=-1)
        change = jnp.where(entry > 0, chosen - current, 0)
        binary = self.base_fn.support is dist.constraints.boolean
        return OneCoordinateStack(
            value, self.value, coordinate, change, alternatives, alternative, binary
        )

    def delta(self, f_stack: jax.Array) -> jax.Array:
        """``Δ`` of shape ``[A, *value.shape]`` from ``f`` at every stack index,
        ``[1 + A·C, *kept]`` with ``kept`` the site's batch shape (size 1 except at kept
        dims) followed by a size-1 dim per event dim."""
        diff = f_stack[1:] - f_stack[:1]
        diff = diff.reshape((self.num_alternatives, self.num_coupled) + diff.shape[1:])
        diff = jnp.broadcast_to(diff, diff.shape[:2] + self.value.shape)
        index = jnp.broadcast_to(self.coupled_index(), self.value.shape)
        index = jnp.broadcast_to(index[None, None], (self.num_alternatives, 1) + self.value.shape)
        return jnp.take_along_axis(diff, index, axis=1)[:, 0]


def _elementwise_base(fn) -> tuple[object, int] | None:
    """``(base, reinterpreted)`` when ``fn`` is an elementwise distribution, possibly
    expanded and with ``reinterpreted`` trailing dims made event dims; else ``None``."""
    reinterpreted = 0
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        if isinstance(fn, dist.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    if isinstance(fn, dist.MaskedDistribution) or fn.event_shape != ():
        return None
    return fn, reinterpreted


def one_coordinate_log_prob(fn, stack: OneCoordinateStack) -> jax.Array | None:
    """``fn.log_prob(stack.value)`` from the log-densities of the base value and of the
    alternatives (computed once, outside the ``vmap``) and a correction at the changed
    coordinate, when ``fn`` is elementwise over the last dim; else ``None``.  This is the
    prior/guide half of appendix I's trick: ``log q(z with z_i flipped)`` is
    ``log q(z) − log q_i(z_i) + log q_i(1 − z_i)``."""
    found = _elementwise_base(fn)
    if found is None:
        return None
    base_fn, reinterpreted = found
    old = base_fn.log_prob(stack.base)
    new = jnp.take(base_fn.log_prob(stack.alternatives), stack.coordinate, axis=-1)
    correction = jnp.where(stack.change != 0, new[stack.alternative], 0.0) - jnp.where(
        stack.change != 0, jnp.take(old, stack.coordinate, axis=-1), 0.0
    )
    if reinterpreted == 0:
        changed = jnp.arange(old.shape[-1]) == stack.coordinate
        return old + jnp.where(changed, correction[..., None], 0.0)
    total = jnp.sum(old, axis=tuple(range(-reinterpreted, 0)))
    return total + jnp.sum(correction, axis=tuple(range(-(reinterpreted - 1), 0)))


#: most factors multiplied before one ``log`` in :func:`shifted_bernoulli_log_prob`
PRODUCT_GROUP = 8
#: a product of ``g`` factors, each in ``[e^{−|W|}, e^{|W|}]``, is taken only while
#: ``g·max|W| <`` this (``e^{±80}`` fits float32)
PRODUCT_LOG_BOUND = 80.0


def shifted_bernoulli_log_prob(fn, value: jax.Array) -> jax.Array | None:
    """``fn.log_prob(value)`` for an elementwise ``Bernoulli(logits=h + d·W[i])`` whose
    logits are a :class:`~numpyro_go.nn.ShiftedOutput` (``d ∈ {−1, 0, 1}``), else ``None``.

    With ``s = σ(h)`` and ``δ = d·W[i]``, elementwise
    ``log p(x | h + δ) = log p(x | h) + x·δ − log(1 + s·(e^δ − 1))``, and ``e^{±W} − 1``
    is one table for all entries, so an entry costs a multiply-add per element instead
    of a ``softplus``; over an event dim the logarithms are taken of products of
    up to :data:`PRODUCT_GROUP` factors (each lies in ``[e^{−|W|}, e^{|W|}]``; fewer as
    ``max|W|`` grows, so that no product leaves ``e^{±80}``, and one large weight late in
    training costs a little speed, not the whole grouping).  Where even one factor could
    overflow, and for elementwise sites, each element gets ``softplus(h + δ) −
    softplus(h)``.  ``log p(x | h)`` is computed once for all entries.  This is
    the likelihood half of appendix I's trick, and more accurate than differencing two
    full likelihoods."""
    found = _elementwise_base(fn)
    if found is None or not isinstance(found[0], dist.BernoulliLogits):
        return None
    base_fn, reinterpreted = found
    shifted = shifted_output(base_fn.logits)
    if shifted is None:
        return None
    old = -jax.nn.softplus(-shifted.base) * value - jax.nn.softplus(shifted.base) * (1 - value)
    change = shifted.change[..., None]
    column = jnp.take(shifted.weight, shifted.coordinate, axis=0)

    def exact_log(_):
        # log(1 + s·(e^δ − 1)) = softplus(h + δ) − softplus(h): no e^δ to overflow
        shifted_logits = jnp.broadcast_to(shifted.base + change * column, old.shape)
        return jax.nn.softplus(shifted_logits) - jax.nn.softplus(shifted.base)

    if reinterpreted == 0:
        return old + value * change * column - exact_log(None)

    def grouped_log(group: int):
        def log_sum(_):
            ratio = jnp.where(
                change > 0, jnp.expm1(column), jnp.where(change < 0, jnp.expm1(-column), 0.0)
            )
            factor = 1 + jnp.broadcast_to(jax.nn.sigmoid(shifted.base) * ratio, old.shape)
            # products of contiguous halves vectorise; a reshape to groups does not
            whole = factor.shape[-1] - factor.shape[-1] % group
            rest = jnp.log(jnp.prod(factor[..., whole:], -1))
            factor = factor[..., :whole]
            while factor.shape[-1] > whole // group:
                half = factor.shape[-1] // 2
                factor = factor[..., :half] * factor[..., half:]
            return jnp.sum(jnp.log(factor), -1) + rest

        return log_sum

    groups = [PRODUCT_GROUP >> k for k in range(PRODUCT_GROUP.bit_length())]  # 8, 4, 2, 1
    largest = jnp.max(jnp.abs(shifted.weight))
    too_large = sum((group * largest >= PRODUCT_LOG_BOUND).astype(jnp.int32) for group in groups)
    branches = [grouped_log(group) for group in groups]
    branches.append(lambda _: jnp.sum(exact_log(None), -1))
    log_factor = jax.lax.switch(too_large, branches, None)
    total = jnp.sum(old, -1) + shifted.change * (value @ column) - log_factor
    return jnp.sum(total, axis=tuple(range(-(reinterpreted - 1), 0)))


#: ``chunk_size="auto"``: perturbed-value elements evaluated at once.  XLA fuses each
#: evaluation batch's flipped likelihood into loops over ``[chunk, *batch, out]``; kept
#: near cache size they run several times faster than one ``vmap`` over every
#: evaluation (measured in ``benchmarks/numpyro_vae_step_time.py``).
AUTO_CHUNK_ELEMENTS = 2**15


@dataclass
class PerturbationReplay:
    """Replays ``model`` with fixed latent values to get ``Δ`` for each leaf site.

    :param model: the model callable.
    :param rng_key: the model's seed for this particle (sites the model samples but the
        guide does not are fixed through ``latents``; the key only keeps handlers happy).
    :param data: parameter values, plate subsample indices and every latent value
        (gradients already stopped).
    :param chunk_size: at most this many evaluations at once (``jax.lax.map`` batches);
        ``"auto"``: :data:`AUTO_CHUNK_ELEMENTS` perturbed-value elements at once.
    :param absorb_linear: let :func:`numpyro_go.nn.linear` absorb one-coordinate stacks.
    """

    model: Callable
    rng_key: jax.Array
    data: dict
    args: tuple
    kwargs: dict
    chunk_size: int | Literal["auto"] | None = "auto"
    absorb_linear: bool = True

    def _log_f(
        self,
        layout: LeafLayout,
        value: jax.Array,
        dependents: dict,
        stack: OneCoordinateStack | None = None,
    ) -> jax.Array:
        """``f``'s terms that depend on the site (``dependents``: model site name -> leaf
        sites its log-density depends on), summed to the site's kept plates; the site's
        own log-densities use ``stack``'s structure where they can."""

        def log_prob(fn, x):
            structured = None
            if stack is not None:
                if x is value:
                    structured = one_coordinate_log_prob(fn, stack)
                else:
                    structured = shifted_bernoulli_log_prob(fn, x)
            return fn.log_prob(x) if structured is None else structured

        data = dict(self.data, **{layout.name: value})
        model = substitute(seed(self.model, self.rng_key), data=data)
        model_trace = trace(model).get_trace(*self.args, **self.kwargs)
        ndim = layout.batch_ndim
        total = jnp.zeros((1,) * ndim)
        for name, site in model_trace.items():
            if site["type"] != "sample" or layout.name not in dependents.get(name, ()):
                continue
            term = log_prob(site["fn"], site["value"])
            if site["scale"] is not None:
                term = site["scale"] * term
            total = total + _sum_to_kept(term, layout.kept_dims, ndim)
        log_q = log_prob(jax.tree.map(stop_gradient, layout.fn), value)
        if layout.scale is not None:
            log_q = stop_gradient(layout.scale) * log_q
        total = total - _sum_to_kept(log_q, layout.kept_dims, ndim)
        return total.reshape(total.shape + (1,) * (value.ndim - ndim))

    def delta(self, layout: LeafLayout, dependents: dict) -> jax.Array:
        """``Δ`` for one leaf site, shape ``[A, *value.shape]`` (no gradient)."""
        alternatives = layout.rule.alternatives(layout.base_fn, layout.value)
        alternatives = jnp.broadcast_to(alternatives, alternatives.shape[:1] + layout.value.shape)

        absorb = self.absorb_linear and layout.perturbs_last_dim_only

        def log_f_at(entry):
            value = layout.perturbed(alternatives, entry)
            if not absorb:
                return self._log_f(layout, value, dependents)
            stack = layout.one_coordinate_stack(alternatives, entry, value)
            with absorbing(stack):
                return self._log_f(layout, value, dependents, stack)

        entries = jnp.arange(1 + layout.num_entries)
        chunk_size = self.chunk_size
        if chunk_size == "auto":
            chunk_size = max(1, AUTO_CHUNK_ELEMENTS // layout.value.size)
        sharded = perturbation_axis()
        if sharded is not None:
            f_stack = map_sharded(log_f_at, entries, *sharded, chunk_size)
        elif chunk_size is None or chunk_size >= entries.shape[0]:
            f_stack = jax.vmap(log_f_at)(entries)
        else:
            f_stack = jax.lax.map(log_f_at, entries, batch_size=chunk_size)
        return stop_gradient(layout.delta(f_stack))
