"""``D_y f`` for all discrete leaf sites of a guide, by replaying the model.

For a discrete guide site ``s`` the GO estimator needs, for every element ``v`` and
alternative value ``a``, ``Δ_{a,v} = f(y with y_v := a) − f(y)`` where
``f = log p(x, z) − log q(z)`` (Cong et al. 2019, eq. 9; appendix I, eqs. 34–36).

Two facts make this cheap (see the design page, ``docs/design.md``):

* **Plates.**  A plate declares conditional independence, so changing element ``v`` in
  *every* slice of the plates of ``s`` at once and summing ``f``'s terms down to those
  plates yields the finite differences of all slices from one evaluation: the Ξ trick
  of appendix I, made generic.  Only the elements of the remaining (*coupled*) dims need
  an evaluation each.  Safety rule: a plate counts as coupled for ``s`` when some model
  term that depends on ``s`` (by provenance) lies outside it, since that term mixes
  slices.
* **Stacking.**  All perturbations of all sites form one stack that is placed on a new
  batch dim to the left of every plate, so the model runs once over the whole stack,
  without autograd, exactly as parallel enumeration does.  ``chunk_size`` bounds the
  stack per replay; ``vectorize=False`` replays perturbations one at a time for models
  that cannot broadcast.

Stack entry 0 is the unperturbed sample, so every difference is taken between numbers
computed by the same kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch.distributions import constraints

from pyro_go.distributions.registry import unwrap_distribution
from pyro_go.distributions.rules import DiscreteRule
from pyro_go.infer.closed_form_deltas import closed_form_deltas
from pyro_go.infer.linear_absorption import (
    AbsorbLinear,
    OneHotStack,
    ShiftedOutput,
    SparseStack,
    one_coordinate_log_prob,
    shifted_bernoulli_log_prob,
)
from pyro_go.infer.recorded_linear import RecordedRun, RecordedTerm
from pyro_go.ops.deferred import DeferredTensor, structure_of
from pyro_go.ops.provenance import strip


@dataclass
class DiscreteLeafSite:
    """One discrete leaf site of the guide and the layout of its perturbations.

    ``element_shape`` is the value's shape without the atom dims (one-hot vectors are
    atoms).  ``independent_dims`` are the element dims that belong to a plate of the
    site in which every dependent model term lies; all other element dims are coupled
    and their ``num_coupled`` positions are perturbed one per stack entry, for each of
    the rule's ``num_alternatives`` alternatives.
    """

    name: str
    rule: DiscreteRule
    guide_site: dict
    value: torch.Tensor
    independent_frames: tuple
    offset: int = 0
    element_shape: torch.Size = field(init=False)
    independent_dims: tuple[int, ...] = field(init=False)
    num_coupled: int = field(init=False)
    num_alternatives: int = field(init=False)

    def __post_init__(self) -> None:
        atom_dim = self.rule.atom_dim
        self.element_shape = self.value.shape[: self.value.dim() - atom_dim]
        batch_dim = len(self.guide_site["fn"].batch_shape)
        self.independent_dims = tuple(
            sorted(batch_dim + frame.dim for frame in self.independent_frames)
        )
        self.num_coupled = 1
        for dim, size in enumerate(self.element_shape):
            if dim not in self.independent_dims:
                self.num_coupled *= size
        self.num_alternatives = self.rule.num_alternatives(self.base_fn)

    @property
    def base_fn(self):
        return unwrap_distribution(self.guide_site["fn"])

    @property
    def num_entries(self) -> int:
        return self.num_alternatives * self.num_coupled

    def _coupled_is_last(self) -> bool:
        last = len(self.element_shape) - 1
        coupled = [d for d in range(len(self.element_shape)) if d not in self.independent_dims]
        return coupled == [last]

    @property
    def perturbs_last_dim_only(self) -> bool:
        """Whether every entry changes one coordinate of the last dim (the same one in
        all plate slices), so that linear layers can absorb it."""
        return self.rule.atom_dim == 0 and self._coupled_is_last()

    @property
    def changes_one_hot_variable(self) -> bool:
        """Whether every entry changes the category of one one-hot variable of the last
        element dim (the same variable in all plate slices)."""
        return self.rule.atom_dim == 1 and self._coupled_is_last()

    def coupled_index(self) -> torch.Tensor:
        """Flat index of each element's coupled position, broadcastable to
        ``element_shape`` (size 1 along independent dims)."""
        shape = [
            1 if dim in self.independent_dims else size
            for dim, size in enumerate(self.element_shape)
        ]
        return torch.arange(self.num_coupled, device=self.value.device).reshape(shape)

    def _entry_positions(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Alternative index and coupled position of local entries ``start..stop-1``."""
        entries = torch.arange(start, stop, device=self.value.device)
        return entries // self.num_coupled, entries % self.num_coupled

    @cached_property
    def alternatives(self) -> torch.Tensor:
        """The rule's alternative values ``[A, *value.shape]``, computed once per site
        (every chunk of a replay reads them)."""
        alternatives = self.rule.alternatives(self.base_fn, self.value)
        return alternatives.expand((alternatives.shape[0],) + self.value.shape)

    def perturbed_values(self, start: int, stop: int) -> torch.Tensor:
        """Values for this site's local stack entries ``start..stop-1``, shape
        ``[stop - start, *value.shape]``."""
        alternative_index, coupled_position = self._entry_positions(start, stop)
        chosen = self.alternatives[alternative_index]
        index = self.coupled_index()
        selected = index.unsqueeze(0) == coupled_position.reshape((-1,) + (1,) * index.dim())
        for _ in range(self.rule.atom_dim):
            selected = selected.unsqueeze(-1)
        return torch.where(selected, chosen, self.value.unsqueeze(0))

    def coordinate_changes(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """For a site that :attr:`perturbs_last_dim_only`: the coordinate of the last dim
        that local entries ``start..stop-1`` change (``[n]``), by how much in each slice
        (``[n, *value.shape[:-1]]``) and which alternative they take (``[n]``), without
        building the entries."""
        alternative_index, coordinate = self._entry_positions(start, stop)
        chosen = self.alternatives[alternative_index, ..., coordinate]  # [n, *batch]
        current = self.value.index_select(-1, coordinate).movedim(-1, 0)
        return coordinate, chosen - current, alternative_index

    def category_changes(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """For a site that :attr:`changes_one_hot_variable`: the variable that local
        entries ``start..stop-1`` change (``[n]``) and its old and new category in each
        slice (``[n, *element_shape[:-1]]``), without building the entries."""
        alternative_index, variable = self._entry_positions(start, stop)
        labels = self.value.argmax(-1)  # [*element_shape]
        new = self.alternatives.argmax(-1)[alternative_index, ..., variable]
        old = labels.index_select(-1, variable).movedim(-1, 0)
        return variable, old, new

    def delta(self, f_entries: torch.Tensor, f_base: torch.Tensor) -> torch.Tensor:
        """Spread per-entry differences over elements: returns ``Δ`` of shape
        ``[A, *element_shape]`` from ``f`` of this site's entries ``[A·E, *kept]`` and of
        the base sample ``[1, *kept]`` (``kept`` aligned to the right of ``element_shape``'s
        batch part, size 1 except at independent dims)."""
        diff = f_entries - f_base
        batch_dim = len(self.guide_site["fn"].batch_shape)
        event_dim = len(self.element_shape) - batch_dim
        diff = diff.reshape(diff.shape[:1] + diff.shape[diff.dim() - batch_dim :])
        diff = diff.reshape((diff.shape[0],) + diff.shape[1:] + (1,) * event_dim)
        diff = diff.reshape((self.num_alternatives, self.num_coupled) + diff.shape[1:]).expand(
            (self.num_alternatives, self.num_coupled) + self.element_shape
        )
        index = self.coupled_index().expand(self.element_shape)
        index = (
            index.unsqueeze(0).unsqueeze(0).expand((self.num_alternatives, 1) + self.element_shape)
        )
        return diff.gather(1, index).squeeze(1)


#: ``chunk_size="auto"``: perturbed-value elements per replay
AUTO_CHUNK_ELEMENTS = 2**18


def _pad_left(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.reshape((1,) * (dim - x.dim()) + x.shape)


def _sum_to_frames(log_prob: torch.Tensor, frames: tuple, depth: int) -> torch.Tensor:
    """Sum a ``[n, *batch]`` log-density (batch right-aligned to ``depth`` dims) over
    every batch dim that is not one of ``frames``; keeps dims (size 1 where summed)."""
    kept = {depth + 1 + frame.dim for frame in frames}
    dims = [d for d in range(1, depth + 1) if d not in kept and log_prob.shape[d] != 1]
    return log_prob.sum(dims, keepdim=True) if dims else log_prob


class PerturbationReplay:
    """Evaluates ``Δ`` for a set of discrete leaf sites by replaying ``model``.

    :param model: the (possibly particle-vectorised) model callable.
    :param guide_trace: the unpruned guide trace (subsample sites included, so that
        replays reuse the same minibatch).
    :param dependents: model site name -> set of leaf sites whose value it depends on.
    :param depth: number of batch dims right of the stack dim (plates and particle dim).
    :param recorded: the model's provenance run; where its recorded linear outputs give
        every term that changes (:mod:`pyro_go.infer.recorded_linear`), no replay runs.
    :param every_term: count every model term of each replay as depending on the
        perturbed sites, including terms the base sample's run did not have (for sites
        that decide the model's structure, replayed one perturbation at a time).
    """

    def __init__(
        self,
        model: Callable,
        guide_trace: Trace,
        sites: list[DiscreteLeafSite],
        dependents: dict[str, frozenset],
        depth: int,
        vectorize: bool,
        chunk_size: int | str | None,
        absorb_linear: bool = True,
        whole_first: bool = False,
        compile_likelihood: bool = False,
        recorded: RecordedRun | None = None,
        every_term: bool = False,
    ) -> None:
        self.model = model
        self.every_term = every_term
        self.guide_trace = guide_trace
        self.sites = sites
        self.dependents = dependents
        self.depth = depth
        self.vectorize = vectorize
        auto_chunk = chunk_size == "auto"
        if not vectorize:
            chunk_size = 1
        elif auto_chunk:
            largest = max((site.value.numel() for site in sites), default=1)
            chunk_size = max(1, AUTO_CHUNK_ELEMENTS // max(largest, 1))
        self.chunk_size = chunk_size
        self.absorb_linear = absorb_linear and vectorize
        self.compile_likelihood = compile_likelihood
        #: the provenance run, whose recorded linear outputs may make replays unneeded
        self.recorded = recorded if self.absorb_linear else None
        #: "auto" chunks grow to the whole rest of the stack once a replay has read none
        #: of its deferred values: then nothing of size ``[n, *batch, …]`` is formed
        self.grow_chunks = self.absorb_linear and auto_chunk
        #: start with the whole stack (when the last step's replays stayed deferred)
        self.whole_first = self.grow_chunks and whole_first
        #: whether every replay of :meth:`deltas` had deferred values and read none
        self.stayed_deferred = False
        offset = 1  # entry 0 is the unperturbed sample
        for site in sites:
            site.offset = offset
            offset += site.num_entries
        self.num_entries = offset

    def _stacked_shape(self, shape: torch.Size, batch_dim: int) -> torch.Size:
        """``[n, *value.shape]`` with the stack dim moved left of every plate."""
        extra = self.depth - batch_dim
        if extra < 0:
            raise ValueError(
                "TraceGO_ELBO: a site has more batch dims than max_plate_nesting allows; "
                "raise max_plate_nesting."
            )
        return shape[:1] + (1,) * extra + shape[1:]

    def _stack(self, value: torch.Tensor, batch_dim: int) -> torch.Tensor:
        return value.reshape(self._stacked_shape(value.shape, batch_dim))

    def _local_range(self, site: DiscreteLeafSite, start: int, stop: int):
        """``(lo, hi, before, after)``: the site's own local entries within global entries
        ``start..stop-1`` and how many base entries precede and follow them; ``None`` if
        the chunk holds none of its entries."""
        lo, hi = max(start, site.offset), min(stop, site.offset + site.num_entries)
        if lo >= hi:
            return None
        return lo - site.offset, hi - site.offset, lo - start, stop - hi

    @staticmethod
    def _pad_entries(own: torch.Tensor, fill: torch.Tensor, before: int, after: int):
        """``own`` with ``before``/``after`` copies of ``fill`` around it on dim 0."""
        pieces = [fill.expand((before,) + fill.shape)] if before else []
        pieces.append(own)
        if after:
            pieces.append(fill.expand((after,) + fill.shape))
        return torch.cat(pieces) if len(pieces) > 1 else own

    def _replay(self, values: dict[str, torch.Tensor]) -> tuple[Trace, list[DeferredTensor]]:
        """The model trace replayed with the stacked ``values`` of the guide sites, and
        the deferred tensors of the replay."""
        trace = self.guide_trace.copy()
        for name, value in values.items():
            trace.nodes[name] = dict(trace.nodes[name], value=value)
        absorb = AbsorbLinear() if self.absorb_linear else contextlib.nullcontext()
        try:
            # the base sample's run already validated the model's distributions; checking
            # them again over the whole stack would cost more than the replay itself
            with pyro.validation_enabled(False), absorb:
                model_trace = poutine.trace(poutine.replay(self.model, trace=trace)).get_trace(
                    *self.args, **self.kwargs
                )
            deferred = [value for value in values.values() if isinstance(value, DeferredTensor)]
            return model_trace, deferred + (absorb.created if self.absorb_linear else [])
        except (RuntimeError, ValueError, IndexError) as error:
            raise ValueError(
                "TraceGO_ELBO could not replay the model over a stack of perturbed "
                f"values of the discrete guide sites {sorted(values)} placed at batch dim "
                f"{-(self.depth + 1)} (left of every plate). The model must broadcast over "
                "extra batch dims on the left (as with parallel enumeration): avoid "
                "reshapes and explicit sizes on latent values, or pass "
                "TraceGO_ELBO(vectorize_perturbations=False) to replay one perturbation "
                f"at a time. Original error: {error}"
            ) from error

    def _check_broadcast(self, name: str, log_prob: torch.Tensor, num: int) -> None:
        fits = log_prob.dim() <= self.depth + 1
        lead = log_prob.shape[0] if log_prob.dim() == self.depth + 1 else 1
        if not fits or lead != num:
            raise ValueError(
                f"TraceGO_ELBO: model site '{name}' depends on a discrete guide site but "
                f"its log_prob has shape {tuple(log_prob.shape)} when the model is replayed "
                f"over {num} perturbations stacked at batch dim {-(self.depth + 1)}: the "
                "model does not broadcast over that dim. Make it broadcast (as for "
                "parallel enumeration), set max_plate_nesting, or pass "
                "TraceGO_ELBO(vectorize_perturbations=False)."
            )

    @staticmethod
    def _site_log_prob(
        fn,
        value: torch.Tensor,
        *args,
        compiled: bool = False,
        shifted: ShiftedOutput | None = None,
        **kwargs,
    ) -> torch.Tensor | None:
        """``fn.log_prob(value, *args, **kwargs)``, through the structure of the deferred
        stack ``value`` (:func:`one_coordinate_log_prob`) or of ``fn``'s deferred logits
        (:func:`shifted_bernoulli_log_prob`, its reduction compiled if ``compiled``) where
        there is one and ``fn`` allows.  With ``shifted``, the structure of ``fn``'s plain
        logits on the whole stack: the closed-form likelihood, or ``None`` where it does
        not apply."""
        if shifted is not None:
            return shifted_bernoulli_log_prob(fn, value, compiled, shifted)
        stack = structure_of(value)
        log_prob = None
        if isinstance(stack, SparseStack):
            log_prob = one_coordinate_log_prob(fn, stack)
        elif stack is None:
            log_prob = shifted_bernoulli_log_prob(fn, value, compiled)
        return fn.log_prob(value, *args, **kwargs) if log_prob is None else log_prob

    def _dependent_nodes(self, model_trace: Trace, names):
        """``(name, node, affected)`` for each model sample site whose log-density
        depends on some of the sites ``names`` (``affected``; all of them for
        ``every_term``)."""
        for name, node in model_trace.nodes.items():
            if node["type"] != "sample" or isinstance(node["fn"], _Subsample):
                continue
            if self.every_term:
                affected = frozenset(names)
            else:
                affected = self.dependents.get(name, frozenset()) & names
            if affected:
                yield name, node, affected

    def _totals(self, values: dict, num: int, terms: list) -> dict[str, torch.Tensor]:
        """``f`` terms that change, summed to each perturbed site's independent plates
        (site name -> ``[num, *kept]``), from the model terms' log-densities over the
        stack (``(name, node, affected, log_prob)``) and the guide sites' own."""
        totals: dict[str, torch.Tensor] = {}
        for name, node, affected, log_prob in terms:
            log_prob = scale_and_mask(log_prob, node["scale"], node["mask"])
            if self.vectorize:
                self._check_broadcast(name, log_prob, num)
            log_prob = _pad_left(log_prob, self.depth + 1)
            for site_name in affected:
                site = self._by_name[site_name]
                term = _sum_to_frames(log_prob, site.independent_frames, self.depth)
                totals[site_name] = totals.get(site_name, 0) + term
        for site_name, value in values.items():
            site = self._by_name[site_name]
            guide_node = site.guide_site
            log_q = self._site_log_prob(guide_node["fn"], value)
            log_q = scale_and_mask(log_q, guide_node["scale"], guide_node["mask"])
            log_q = _pad_left(log_q, self.depth + 1)
            totals[site_name] = totals.get(site_name, 0) - _sum_to_frames(
                log_q, site.independent_frames, self.depth
            )
        return totals

    def _log_f(self, values: dict, num: int) -> tuple[dict[str, torch.Tensor], bool]:
        """:meth:`_totals` from a replay of the model over ``values``, and whether the
        replay had deferred tensors and read none of them."""
        model_trace, deferred = self._replay(values)
        terms = [
            (name, node, affected, self._node_log_prob(node, node["fn"], node["value"]))
            for name, node, affected in self._dependent_nodes(model_trace, values.keys())
        ]
        totals = self._totals(values, num, terms)
        return totals, bool(deferred) and not any(tensor.computed for tensor in deferred)

    def _node_log_prob(self, node: dict, fn, value, shifted=None) -> torch.Tensor | None:
        return self._site_log_prob(
            fn,
            value,
            *node["args"],
            compiled=self.compile_likelihood,
            shifted=shifted,
            **node["kwargs"],
        )

    def _recorded_plan(self) -> list[RecordedTerm] | None:
        """How each model term that the sites' flips change follows from the provenance
        run's recorded linear outputs (:mod:`pyro_go.infer.recorded_linear`), or
        ``None`` where some changing term needs the replay."""
        recorded, plan = self.recorded, []
        nodes = self._dependent_nodes(recorded.model_trace, self._by_name.keys())
        for name, node, affected in nodes:
            if len(affected) != 1:
                return None
            (site_name,) = affected
            site = self._by_name[site_name]
            binary = site.perturbs_last_dim_only and site.base_fn.support is constraints.boolean
            kind = recorded.term(node, site_name, binary)
            if kind is None:
                return None
            plan.append(RecordedTerm(name, node, site_name, kind[1]))
        return plan

    def _recorded_log_f(self, plan: list[RecordedTerm]) -> tuple[dict, dict, int] | None:
        """``(values, totals, num)`` of the whole stack from the recorded terms
        ``plan``, without a replay; ``None`` where a likelihood has no closed form."""
        values, num = self._values_for(0, self.num_entries)
        terms = []
        for name, node, site_name, output in plan:
            if output is None:
                log_prob = self._node_log_prob(node, node["fn"], values[site_name])
            else:
                stack = values[site_name].structure
                shifted = ShiftedOutput(
                    output.output.detach(), stack.delta, stack.index, output.columns.detach()
                )
                log_prob = self._node_log_prob(node, node["fn"], node["value"], shifted)
                if log_prob is None:
                    return None
            terms.append((name, node, frozenset({site_name}), log_prob))
        return values, self._totals(values, num, terms), num

    def deltas(self, args, kwargs) -> dict[str, torch.Tensor]:
        """Run the replays (none where the provenance run's recorded linear outputs give
        every changing term); returns site name -> ``Δ`` of shape
        ``[A, *element_shape]``."""
        self.args, self.kwargs = args, kwargs
        self._by_name = {site.name: site for site in self.sites}
        self._pieces: dict[str, list[torch.Tensor]] = {site.name: [] for site in self.sites}
        self._base: dict[str, torch.Tensor] = {}
        self.stayed_deferred = True
        with torch.no_grad():
            plan = self._recorded_plan() if self.recorded is not None else None
            if plan is not None:
                closed = closed_form_deltas(self.sites, plan, self.compile_likelihood)
                if closed is not None:
                    return closed
            recorded = self._recorded_log_f(plan) if plan is not None else None
            if recorded is not None:
                values, totals, num = recorded
                self._keep(values, totals, 0, num)
            else:
                self._replay_chunks()
        return {
            site.name: strip(site.delta(torch.cat(self._pieces[site.name]), self._base[site.name]))
            for site in self.sites
        }

    def _replay_chunks(self) -> None:
        """Replay the model over the stack, one chunk at a time."""
        step = self.num_entries if self.whole_first else self.chunk_size or self.num_entries
        stop = 0
        while stop < self.num_entries:
            start, stop = stop, min(stop + step, self.num_entries)
            values, num = self._values_for(start, stop)
            totals, stayed_deferred = self._log_f(values, num)
            self.stayed_deferred &= stayed_deferred
            if stayed_deferred and self.grow_chunks:
                step = self.num_entries
            self._keep(values, totals, start, stop)

    def _keep(self, values: dict, totals: dict, start: int, stop: int) -> None:
        """File the ``f`` totals of global entries ``start..stop-1`` under their sites
        (and the base entry's, from the chunk that holds it)."""
        num = stop - start
        for name in values:
            f = totals[name].expand((num,) + totals[name].shape[1:])
            site = self._by_name[name]
            lo = max(start, site.offset) - start
            hi = min(stop, site.offset + site.num_entries) - start
            if start == 0:
                self._base[name] = f[:1]
            if hi > lo:
                self._pieces[name].append(f[lo:hi])

    def _values_for(self, start: int, stop: int) -> tuple[dict, int]:
        """Values of the sites perturbed in global entries ``start..stop-1`` (all sites
        in the chunk that holds the base entry 0), stacked left of every plate; deferred
        (:class:`~pyro_go.ops.deferred.DeferredTensor`) with their few-coordinate
        structure where linear layers may absorb them."""
        num = stop - start
        values = {}
        for site in self.sites:
            local = self._local_range(site, start, stop)
            if local is None and start != 0:
                continue
            lo, hi, before, after = local if local is not None else (0, 0, num, 0)
            batch_dim = len(site.guide_site["fn"].batch_shape)

            def stacked(site=site, lo=lo, hi=hi, before=before, after=after, batch_dim=batch_dim):
                own = site.perturbed_values(lo, hi)
                stacked = self._pad_entries(own, site.value, before, after)
                return self._stack(stacked, batch_dim) if self.vectorize else stacked[0]

            structure = None
            if self.absorb_linear:
                structure = self._structure(site, lo, hi, before, after)
            if structure is None:
                values[site.name] = stacked()
            else:
                shape = self._stacked_shape((num,) + site.value.shape, batch_dim)
                values[site.name] = DeferredTensor(shape, site.value, stacked, structure)
        return values, num

    def _structure(self, site, lo, hi, before, after):
        """The few-coordinate structure of a site's stacked values, or ``None``."""
        batch_dim = len(site.guide_site["fn"].batch_shape)
        if site.perturbs_last_dim_only:
            coordinate, change, alternative = site.coordinate_changes(lo, hi)
            coordinate = self._pad_entries(coordinate, coordinate.new_zeros(()), before, after)
            alternative = self._pad_entries(alternative, alternative.new_zeros(()), before, after)
            change = self._pad_entries(
                change, change.new_zeros(()).expand(change.shape[1:]), before, after
            )
            change = self._stack(change, batch_dim)
            alternatives = site.alternatives
            binary = site.base_fn.support is constraints.boolean
            return SparseStack(site.value, coordinate, change, alternatives, alternative, binary)
        if site.changes_one_hot_variable:
            variable, old, new = site.category_changes(lo, hi)
            variable = self._pad_entries(variable, variable.new_zeros(()), before, after)
            labels = site.value.argmax(-1)[..., 0]  # padding entries change nothing
            old = self._pad_entries(old, labels, before, after)
            new = self._pad_entries(new, labels, before, after)
            old, new = self._stack(old, batch_dim), self._stack(new, batch_dim)
            return OneHotStack(site.value, variable, old, new)
        return None
