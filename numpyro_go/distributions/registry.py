"""The registry that maps NumPyro distribution classes to GO rules, and its lookup.

Users extend it for their own distribution classes::

    from numpyro_go import register_go_rule
    from numpyro_go.distributions.rules import VariableNablaRule

    class MyCountRule(VariableNablaRule):
        parameter_names = ("rate",)

        def variable_nabla(self, fn, value):
            return {"rate": ...}  # −∂Q(value)/∂rate / q(value)

    register_go_rule(MyCountDistribution, MyCountRule())

Lookup walks the method resolution order of the *base* distribution (``Independent``,
``.expand()``, ``.mask()`` and ``.to_event()`` are seen through).  Classes without a
registered rule get a generic one when they qualify: a pathwise sampler
(:class:`~numpyro_go.distributions.rules.Reparameterized`, see
:func:`has_pathwise_sample`), a support on ``{0, 1, 2, ...}``
(:class:`~numpyro_go.distributions.rules.GenericCountRule`), or a univariate continuous
family with a ``cdf`` (:class:`~numpyro_go.distributions.rules.CDFSurrogate`; whether
that cdf is differentiable in every parameter is checked when the first sample is
drawn).  The estimators give the sites left over the score function.
"""

from __future__ import annotations

from typing import Literal

import numpyro.distributions as dist

from numpyro_go.distributions import rules

CategoricalForm = Literal["local", "raw"]

_REGISTRY: dict[type, rules.GORule] = {}


def register_go_rule(dist_class: type, rule: rules.GORule) -> rules.GORule:
    """Register ``rule`` for ``dist_class`` and its subclasses; returns the rule.

    A rule registered later for a subclass takes precedence over its parent's.
    """
    if not (isinstance(dist_class, type) and issubclass(dist_class, dist.Distribution)):
        raise TypeError(
            f"expected a numpyro.distributions.Distribution subclass, got {dist_class!r}"
        )
    if not isinstance(rule, rules.GORule):
        raise TypeError(f"expected a numpyro_go GORule instance, got {rule!r}")
    _REGISTRY[dist_class] = rule
    return rule


def unwrap_distribution(fn: dist.Distribution) -> dist.Distribution:
    """Strip ``Independent``, ``ExpandedDistribution`` and ``MaskedDistribution``
    wrappers, which do not change the law of one element."""
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


#: families whose sampler is JAX's implicit reparameterisation (Figurnov et al. 2018),
#: the GO gradient of a continuous variable: used even in subclasses that declare no
#: ``reparametrized_params`` (NumPyro's way to mark a site non-reparameterised)
IMPLICIT_FAMILIES = (dist.Gamma, dist.Beta, dist.Dirichlet)


def has_pathwise_sample(fn: dist.Distribution) -> bool:
    """Whether a base distribution's ``sample`` is pathwise differentiable: it says so
    (``has_rsample``), or its sampler is that of a Gamma, Beta or Dirichlet.

    For a continuous variable the pathwise (implicit) gradient equals GO's
    (Cong et al. 2019, section 3), so turning it off would only raise the variance."""
    if fn.has_rsample:
        return True
    return any(type(fn).sample is family.sample for family in IMPLICIT_FAMILIES)


def _has_cdf(fn: dist.Distribution) -> bool:
    return type(fn).cdf is not dist.Distribution.cdf


def get_go_rule(
    fn: dist.Distribution, categorical_form: CategoricalForm = "local"
) -> rules.GORule | None:
    """The GO rule for a (possibly wrapped) distribution, or ``None`` if it has none.

    :param categorical_form: ``"local"`` (default) sums out each element of a finite
        support analytically (``K − 1`` evaluations of ``f`` per element); ``"raw"``
        uses Theorem 1 directly (one evaluation per element).
    """
    if categorical_form not in ("local", "raw"):
        raise ValueError(f"categorical_form must be 'local' or 'raw', got {categorical_form!r}")
    base = unwrap_distribution(fn)
    for cls in type(base).__mro__:
        rule = _REGISTRY.get(cls)
        if rule is not None:
            return getattr(rule, "raw_form", rule) if categorical_form == "raw" else rule
    if has_pathwise_sample(base):
        return REPARAMETERIZED
    support = base.support
    if support.is_discrete:
        if base.event_shape == () and rules.is_count_support(support):
            return GENERIC_COUNT
        return None
    if base.event_shape == () and _has_cdf(base):
        return CDF_SURROGATE
    return None


REPARAMETERIZED = rules.Reparameterized()
CDF_SURROGATE = rules.CDFSurrogate()
GENERIC_COUNT = rules.GenericCountRule()

_BERNOULLI = rules.BernoulliLocal()
_CATEGORICAL = rules.CategoricalLocal()
_GEOMETRIC = rules.GeometricRule()
_BINOMIAL = rules.BinomialRule()
register_go_rule(dist.BernoulliProbs, _BERNOULLI)
register_go_rule(dist.BernoulliLogits, _BERNOULLI)
register_go_rule(dist.CategoricalProbs, _CATEGORICAL)
register_go_rule(dist.CategoricalLogits, _CATEGORICAL)
register_go_rule(dist.Poisson, rules.PoissonRule())
register_go_rule(dist.GeometricProbs, _GEOMETRIC)
register_go_rule(dist.GeometricLogits, _GEOMETRIC)
register_go_rule(dist.BinomialProbs, _BINOMIAL)
register_go_rule(dist.BinomialLogits, _BINOMIAL)
register_go_rule(dist.GammaPoisson, rules.GammaPoissonRule())

__all__ = [
    "CategoricalForm",
    "IMPLICIT_FAMILIES",
    "get_go_rule",
    "has_pathwise_sample",
    "register_go_rule",
    "unwrap_distribution",
]
