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
arrive at the same closed forms (appendix I's trick, eqs. 34–36).  :class:`RecordLinear`
records the linear layers applied to tracked values during that run, and
:class:`RecordedRun` matches the model's terms to them.  Any other use of ``z`` (a
nonlinear first layer, logits changed after the layer, a term that depends on two
sites) leaves the replay, which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.poutine.trace_struct import Trace
from torch.overrides import TorchFunctionMode

from pyro_go.infer.linear_absorption import elementwise_base, linear_layer
from pyro_go.ops.provenance import ProvenanceTensor, provenance_of, strip


@dataclass
class LinearOutput:
    """``output = F.linear(input, W, b)`` as recorded: ``columns = Wᵀ`` ``[in, out]``,
    ``output`` without provenance, and its version counter when it was made (an
    in-place change afterwards makes it a different value)."""

    input: torch.Tensor
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


class RecordLinear(TorchFunctionMode):
    """While active, records every linear layer (:func:`linear_layer`) whose input is
    a provenance-tracked tensor, in ``outputs``; changes nothing it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[LinearOutput] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if args and isinstance(args[0], ProvenanceTensor) and torch.is_tensor(result):
            layer = linear_layer(func, args, kwargs)
            if layer is not None:
                output = strip(result)
                columns = strip(layer[0]).t()
                self.outputs.append(LinearOutput(args[0], columns, output, output._version))
        return result


@dataclass
class RecordedRun:
    """The provenance run of the model: its trace, the tracked value of each discrete
    guide site it received, and the linear layers it applied to them."""

    model_trace: Trace
    tracked: dict[str, torch.Tensor]
    outputs: list[LinearOutput] = field(default_factory=list)

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
            for output in self.outputs:
                if output.input is self.tracked[site] and output.is_unchanged(logits):
                    return "logits", output
            return None
        if node["value"] is self.tracked[site]:
            return "value", None
        return None
