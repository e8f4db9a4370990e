"""``D_y f`` without a replay, from linear outputs recorded on the provenance run.

``TraceGO_ELBO`` runs the model once with provenance-tracked discrete values, to learn
which terms of ``f`` depend on which site.  If a discrete leaf site ``z`` reaches the
model's terms only

* as the value of sites whose elementwise distribution does not depend on ``z`` (the
  prior: its flips have the one-coordinate closed form of
  :func:`~pyro_go.infer.linear_absorption.one_coordinate_log_prob`), and
* through one linear layer, ``h = F.linear(z, W, b)`` or ``h = z @ M``, whose output is,
  unchanged, the logits of an elementwise ``Bernoulli`` site (the likelihood:
  :func:`~pyro_go.infer.linear_absorption.shifted_bernoulli_log_prob` needs only
  ``h``, ``W`` and the flips),

then every term that a flip of ``z`` changes has a closed form in numbers that run has
already computed: the perturbation replay (:mod:`pyro_go.infer.perturbation`) would
recompute ``h`` and run the model's Python and Pyro's effect handlers once more to
arrive at the same closed forms (appendix I's trick, eqs. 34–36).  The values the model
receives in that run are :class:`RecordingTensor` values, which record the linear layers
applied to them, and :class:`RecordedRun` matches the model's terms to those.  The
matched terms give ``Δ`` in closed form (:mod:`pyro_go.infer.closed_form_deltas`), or
where their layout is not that simple, over the perturbation stack.  Any other use of
``z`` (a nonlinear first layer, logits changed after the layer, a term that depends on
two sites) leaves the replay, which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from pyro.poutine.trace_struct import Trace

from pyro_go.infer.linear_absorption import elementwise_base, linear_layer
from pyro_go.ops.provenance import ProvenanceTensor, provenance_of, strip


@dataclass
class LinearOutput:
    """``output = F.linear(input, W, b)`` as recorded: ``columns = Wᵀ`` ``[in, out]``,
    ``output`` without provenance, and its version counter when it was made (an
    in-place change afterwards makes it a different value)."""

    columns: torch.Tensor
    output: torch.Tensor
    version: int

    def is_unchanged(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is this output: the same memory, layout and version."""
        output = self.output
        return (
            tensor.data_ptr() == output.data_ptr()
            and tensor.shape == output.shape
            and tensor.stride() == output.stride()
            and tensor.dtype == output.dtype
            and tensor._version == self.version
        )


class RecordedTerm(NamedTuple):
    """A model term that a flip of leaf site ``site`` alone changes, as the recorded run
    gives it: ``output`` is the recorded linear output that is its Bernoulli logits, or
    ``None`` when the term's value is the site's."""

    name: str
    node: dict
    site: str
    output: LinearOutput | None


class RecordingTensor(ProvenanceTensor):
    """A discrete site's tracked value as the model receives it: a
    :class:`~pyro_go.ops.provenance.ProvenanceTensor` that also records, in
    ``linear_outputs``, every linear layer (:func:`linear_layer`) applied to it
    directly.  Results of ops on it are plain provenance tensors, so recording costs
    nothing beyond the ops on the value itself (a ``TorchFunctionMode`` would see every
    op of the model)."""

    linear_outputs: list[LinearOutput]

    @staticmethod
    def __new__(cls, data: torch.Tensor, provenance: frozenset):
        recording = super().__new__(cls, data, provenance)
        recording.linear_outputs = []
        return recording

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs)
        if args and type(args[0]) is cls and torch.is_tensor(result):
            layer = linear_layer(func, args, kwargs or {})
            if layer is not None:
                output = strip(result)
                columns = strip(layer[0]).t()
                record = LinearOutput(columns, output, output._version)
                args[0].linear_outputs.append(record)
        return result


@dataclass
class RecordedRun:
    """The provenance run of the model: its trace and the tracked value of each discrete
    guide site it received (a :class:`RecordingTensor` holds the linear layers the
    model applied to it)."""

    model_trace: Trace
    tracked: dict[str, RecordingTensor]

    def term(self, node: dict, site: str, binary: bool) -> tuple[str, LinearOutput | None] | None:
        """How model term ``node``, which depends on leaf site ``site`` alone, changes
        with its flips: ``("value", None)`` when its value is the site's,
        ``("logits", output)`` when its Bernoulli logits are a recorded linear output
        of the site (only for a ``binary`` site); ``None`` when only a replay can say."""
        found = elementwise_base(node["fn"])
        if found is None:
            return None
        base_fn = found[0]
        parameters = [value for value in vars(base_fn).values() if torch.is_tensor(value)]
        if any(site in provenance_of(value) for value in parameters):
            if not binary or not isinstance(base_fn, torch.distributions.Bernoulli):
                return None
            if site in provenance_of(node["value"]) or "logits" not in vars(base_fn):
                return None
            logits = strip(base_fn.logits)
            for output in self.tracked[site].linear_outputs:
                if output.is_unchanged(logits):
                    return "logits", output
            return None
        if node["value"] is self.tracked[site]:
            return "value", None
        return None
