"""GO-enabled subclasses of Pyro's discrete distributions.

Each class behaves exactly like its Pyro parent (sampling, ``log_prob``, use in models
and guides) and adds three methods that expose the GO machinery outside an ELBO:

* :meth:`GOMixin.variable_nabla` — ``g_η(y) = −∂_η Q(y)/q(y)`` per parameter (Theorem 1);
* :meth:`GOMixin.carrier` — ``ŷ`` with value ``y`` and gradient ``g(y)`` (Algorithm 1),
  to pair with ``D_y f = f(y + 1) − f(y)``;
* :meth:`GOMixin.go_surrogate` — :func:`~pyro_go.distributions.functional.go_surrogate`
  for this distribution.

Example — a GO gradient for a discrete generator::

    counts = GOPoisson(rate_net(noise))
    objective = counts.go_surrogate(lambda y: -((y - target) ** 2).sum(-1))
    objective.backward()
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_go.distributions.functional import go_surrogate
from pyro_go.distributions.registry import CategoricalForm, get_go_rule


class GOMixin:
    """Adds GO methods to a distribution class (see module docstring)."""

    def go_rule(self, categorical_form: CategoricalForm = "local"):
        """The :class:`~pyro_go.distributions.rules.GORule` of this distribution."""
        return get_go_rule(self, categorical_form)

    def variable_nabla(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """``g_η(value)`` for each named parameter η, elementwise."""
        return self.go_rule().variable_nabla(self, value)

    def carrier(self, value: torch.Tensor) -> torch.Tensor:
        """``ŷ = y + Σ_η stop(g_η)(η − stop η)``: value ``y``, gradient ``g(y)``."""
        return self.go_rule().carrier(self, value)

    def go_surrogate(self, f, value: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """See :func:`~pyro_go.distributions.functional.go_surrogate`."""
        return go_surrogate(self, f, value, **kwargs)


class GOBernoulli(GOMixin, dist.Bernoulli):
    """:class:`pyro.distributions.Bernoulli` with GO methods (local form, eq. 34)."""


class GOCategorical(GOMixin, dist.Categorical):
    """:class:`pyro.distributions.Categorical` with GO methods."""


class GOOneHotCategorical(GOMixin, dist.OneHotCategorical):
    """:class:`pyro.distributions.OneHotCategorical` with GO methods."""


class GOPoisson(GOMixin, dist.Poisson):
    """:class:`pyro.distributions.Poisson` with GO methods (``g_λ = 1``)."""


class GOGeometric(GOMixin, dist.Geometric):
    """:class:`pyro.distributions.Geometric` with GO methods (``g_p = −(y+1)/p``)."""


class GOBinomial(GOMixin, dist.Binomial):
    """:class:`pyro.distributions.Binomial` with GO methods (``g_p = (n−y)/(1−p)``)."""


class GONegativeBinomial(GOMixin, dist.NegativeBinomial):
    """:class:`pyro.distributions.NegativeBinomial` with GO methods in ``r`` and ``p``."""


class GOGammaPoisson(GOMixin, dist.GammaPoisson):
    """:class:`pyro.distributions.GammaPoisson` with GO methods in ``α`` and ``β``."""


class GOZeroInflatedPoisson(GOMixin, dist.ZeroInflatedPoisson):
    """:class:`pyro.distributions.ZeroInflatedPoisson` with GO methods (generic rule)."""


class GOZeroInflatedNegativeBinomial(GOMixin, dist.ZeroInflatedNegativeBinomial):
    """:class:`pyro.distributions.ZeroInflatedNegativeBinomial` with GO methods."""


class GOBetaBinomial(GOMixin, dist.BetaBinomial):
    """:class:`pyro.distributions.BetaBinomial` with GO methods (generic rule)."""
