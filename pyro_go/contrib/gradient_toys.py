"""The GO paper's one-dimensional toys (Figure 2, appendix H) as Pyro models and guides.

The ELBO ``E_q[log p(z|x) − log q(z)] + log p(x)`` with a target posterior
``NB(r0, p0)`` or ``Gamma(α0, β0)`` and a guide of the same family; maximising it is
minimising ``KL(q‖p)``, which :func:`exact_kl` computes exactly.  Shared by
``benchmarks/variance_toys.py`` and the first tutorial.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


@dataclass
class Toy:
    """One toy: its family, target parameters and named guide settings."""

    name: str
    family: str  # "nb" or "gamma"
    target: tuple[float, float]
    settings: dict[str, tuple[float, float]]

    def param_names(self) -> tuple[str, str]:
        return ("r", "p") if self.family == "nb" else ("alpha", "beta")

    def distribution(self, first, second):
        if self.family == "nb":
            return dist.NegativeBinomial(first, probs=second)
        return dist.Gamma(first, second)

    def model(self) -> None:
        first, second = (torch.tensor(v) for v in self.target)
        pyro.sample("z", self.distribution(first, second))

    def guide(self, baseline: bool = False) -> None:
        """The guide; ``baseline=True`` adds a decaying-average baseline for
        :class:`~pyro.infer.TraceGraph_ELBO`."""
        a, b = self.param_names()
        first = pyro.param(a, torch.tensor(1.0), constraint=constraints.positive)
        second_constraint = (
            constraints.unit_interval if self.family == "nb" else constraints.positive
        )
        second = pyro.param(b, torch.tensor(0.5), constraint=second_constraint)
        infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
        pyro.sample("z", self.distribution(first, second), infer=infer if baseline else {})


TOYS = [
    Toy("NB(r0=10, p0=0.2)", "nb", (10.0, 0.2), {"start": (1.0, 0.5), "near": (12.0, 0.25)}),
    Toy("NB(r0=0.5, p0=0.2)", "nb", (0.5, 0.2), {"start": (1.0, 0.5), "near": (0.6, 0.25)}),
    Toy("Gamma(a0=1, b0=0.5)", "gamma", (1.0, 0.5), {"start": (2.0, 1.0), "near": (1.2, 0.6)}),
    Toy(
        "Gamma(a0=0.01, b0=0.5)", "gamma", (0.01, 0.5), {"start": (0.1, 1.0), "near": (0.012, 0.6)}
    ),
]


def set_guide_params(toy: Toy, values: tuple[float, float]) -> list[torch.Tensor]:
    """Clear the param store, set the guide's parameters to ``values`` and return their
    unconstrained tensors (``log r, logit p`` or ``log α, log β``)."""
    pyro.clear_param_store()
    names = toy.param_names()
    toy.guide()
    for name, value in zip(names, values, strict=True):
        pyro.get_param_store()[name] = torch.tensor(value)
    return [pyro.param(name).unconstrained() for name in names]


def exact_kl(toy: Toy, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``KL(q‖p)`` for the guide ``q`` with parameters ``(first, second)``, differentiable:
    closed form for Gamma, a sum over the support truncated where both ``q`` and ``p``
    have a tail below 1e-15 (use float64) for NB."""
    q = toy.distribution(first, second)
    p = toy.distribution(*(torch.tensor(v, dtype=first.dtype) for v in toy.target))
    if toy.family == "gamma":
        return torch.distributions.kl_divergence(q, p)
    k = torch.arange(0, 200000, dtype=first.dtype)
    log_q, log_p = q.log_prob(k), p.log_prob(k)
    return (log_q.exp() * (log_q - log_p)).sum()
