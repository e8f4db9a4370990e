"""GO-enabled subclasses of NumPyro's discrete distributions (the JAX twin of
:mod:`pyro_go.distributions.go_distributions`).

Each class behaves exactly like its NumPyro parent and adds:

* :meth:`GOMixin.variable_nabla` — ``g_η(y) = −∂_η Q(y)/q(y)`` per parameter (Theorem 1);
* :meth:`GOMixin.go_surrogate` — :func:`~numpyro_go.distributions.functional.go_surrogate`
  for this distribution.

Example — a GO gradient for a discrete generator::

    def objective(params, key):
        counts = GOPoisson(rate_net(params, noise))
        return counts.go_surrogate(lambda y: -jnp.sum((y - target) ** 2), key)

    grads = jax.grad(objective)(params, key)
"""

from __future__ import annotations

import numpyro.distributions as dist

from numpyro_go.distributions.functional import go_surrogate
from numpyro_go.distributions.registry import CategoricalForm, get_go_rule


class GOMixin:
    """Adds GO methods to a distribution class (see module docstring)."""

    def go_rule(self, categorical_form: CategoricalForm = "local"):
        """The :class:`~numpyro_go.distributions.rules.GORule` of this distribution."""
        return get_go_rule(self, categorical_form)

    def variable_nabla(self, value):
        """``g_η(value)`` for each named parameter η, elementwise."""
        return self.go_rule().variable_nabla(self, value)

    def go_surrogate(self, f, rng_key=None, value=None, **kwargs):
        """See :func:`~numpyro_go.distributions.functional.go_surrogate`."""
        return go_surrogate(self, f, rng_key, value, **kwargs)


class GOBernoulliProbs(GOMixin, dist.BernoulliProbs):
    """:class:`numpyro.distributions.BernoulliProbs` with GO methods (local form)."""


class GOBernoulliLogits(GOMixin, dist.BernoulliLogits):
    """:class:`numpyro.distributions.BernoulliLogits` with GO methods (local form)."""


class GOCategoricalProbs(GOMixin, dist.CategoricalProbs):
    """:class:`numpyro.distributions.CategoricalProbs` with GO methods."""


class GOCategoricalLogits(GOMixin, dist.CategoricalLogits):
    """:class:`numpyro.distributions.CategoricalLogits` with GO methods."""


class GOPoisson(GOMixin, dist.Poisson):
    """:class:`numpyro.distributions.Poisson` with GO methods."""


class GOGeometricProbs(GOMixin, dist.GeometricProbs):
    """:class:`numpyro.distributions.GeometricProbs` with GO methods."""


class GOBinomialProbs(GOMixin, dist.BinomialProbs):
    """:class:`numpyro.distributions.BinomialProbs` with GO methods."""


class GOGammaPoisson(GOMixin, dist.GammaPoisson):
    """:class:`numpyro.distributions.GammaPoisson` with GO methods."""


class GONegativeBinomial2(GOMixin, dist.NegativeBinomial2):
    """:class:`numpyro.distributions.NegativeBinomial2` (mean, concentration) with GO
    methods."""


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
]
