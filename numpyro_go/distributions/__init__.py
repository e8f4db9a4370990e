"""GO rules, their registry, GO-enabled NumPyro distributions and ``go_surrogate``."""

from numpyro_go.distributions.functional import go_surrogate
from numpyro_go.distributions.go_distributions import (
    GOBernoulliLogits,
    GOBernoulliProbs,
    GOBinomialProbs,
    GOCategoricalLogits,
    GOCategoricalProbs,
    GOGammaPoisson,
    GOGeometricProbs,
    GOMixin,
    GONegativeBinomial2,
    GOPoisson,
)
from numpyro_go.distributions.registry import get_go_rule, register_go_rule, unwrap_distribution

__all__ = [
    "GOBernoulliLogits",
    "GOBernoulliProbs",
    "GOBinomialProbs",
    "GOCategoricalLogits",
    "GOCategoricalProbs",
    "GOGammaPoisson",
    "GOGeometricProbs",
    "GOMixin",
    "GONegativeBinomial2",
    "GOPoisson",
    "get_go_rule",
    "go_surrogate",
    "register_go_rule",
    "unwrap_distribution",
]
