"""GO gradient rules for Pyro distributions, their registry, GO-enabled distribution
classes, and a functional helper for GO gradients outside an ELBO."""

from pyro_go.distributions.functional import go_surrogate
from pyro_go.distributions.go_distributions import (
    GOBernoulli,
    GOBetaBinomial,
    GOBinomial,
    GOCategorical,
    GOGammaPoisson,
    GOGeometric,
    GOMixin,
    GONegativeBinomial,
    GOOneHotCategorical,
    GOPoisson,
    GOZeroInflatedNegativeBinomial,
    GOZeroInflatedPoisson,
)
from pyro_go.distributions.registry import get_go_rule, register_go_rule, unwrap_distribution

__all__ = [
    "GOBernoulli",
    "GOBetaBinomial",
    "GOBinomial",
    "GOCategorical",
    "GOGammaPoisson",
    "GOGeometric",
    "GOMixin",
    "GONegativeBinomial",
    "GOOneHotCategorical",
    "GOPoisson",
    "GOZeroInflatedNegativeBinomial",
    "GOZeroInflatedPoisson",
    "get_go_rule",
    "go_surrogate",
    "register_go_rule",
    "unwrap_distribution",
]
