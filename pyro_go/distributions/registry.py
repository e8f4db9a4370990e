"""The registry that maps distribution classes to GO rules, and its lookup.

Users extend it for their own distribution classes::

    from pyro_go import register_go_rule
    from pyro_go.distributions.rules import VariableNablaRule

    class MyCountRule(VariableNablaRule):
        parameter_names = ("rate",)

        def variable_nabla(self, fn, value):
            return {"rate": ...}  # −∂Q(value)/∂rate / q(value)

    register_go_rule(MyCountDistribution, MyCountRule())

Lookup walks the method resolution order of the *base* distribution (wrappers such as
``Independent``, ``.expand()``, ``.mask()`` and ``.to_event()`` are seen through), so a
rule registered for a torch class also serves its Pyro subclass.  Classes without a
registered rule get a generic one when they qualify: a pathwise ``rsample``
(:class:`~pyro_go.distributions.rules.Reparameterized`, see :func:`has_pathwise_sample`),
a support on ``{0, 1, 2, ...}`` (:class:`~pyro_go.distributions.rules.GenericCountRule`),
or a univariate continuous family with a ``cdf``
(:class:`~pyro_go.distributions.rules.CDFSurrogate`; whether that cdf is differentiable
in every parameter is checked when the first sample is drawn).  The estimators give the
sites left over (``Empirical``, continuous families with neither) the score function.
"""

from __future__ import annotations

from typing import Literal

import torch.distributions as tdist
from pyro.distributions import GammaPoisson
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution

from pyro_go.distributions import rules

CategoricalForm = Literal["local", "raw"]

_REGISTRY: dict[type, rules.GORule] = {}


def register_go_rule(dist_class: type, rule: rules.GORule) -> rules.GORule:
    """Register ``rule`` for ``dist_class`` and its subclasses; returns the rule.

    A rule registered later for a subclass takes precedence over its parent's.
    """
    if not (isinstance(dist_class, type) and issubclass(dist_class, tdist.Distribution)):
        raise TypeError(f"expected a torch.distributions.Distribution subclass, got {dist_class!r}")
    if not isinstance(rule, rules.GORule):
        raise TypeError(f"expected a pyro_go GORule instance, got {rule!r}")
    _REGISTRY[dist_class] = rule
    return rule


def unwrap_distribution(fn: tdist.Distribution) -> tdist.Distribution:
    """Strip ``Independent``, ``ExpandedDistribution`` and ``MaskedDistribution``
    wrappers, which do not change the law of one element."""
    while isinstance(fn, (tdist.Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


#: families whose ``rsample`` is torch's implicit reparameterisation (Figurnov et al.
#: 2018), the GO gradient of a continuous variable: used even in subclasses that declare
#: ``has_rsample = False`` (such as ``pyro.distributions.testing.fakes``)
IMPLICIT_FAMILIES = (tdist.Gamma, tdist.Beta, tdist.Dirichlet)


def has_pathwise_sample(fn: tdist.Distribution) -> bool:
    """Whether a base distribution's ``rsample`` gives pathwise samples: it says so, or
    its class does (Pyro's ``has_rsample_(False)`` only switches the instance to
    detached samples), or its ``rsample`` is that of a Gamma, Beta or Dirichlet.

    For a continuous variable the pathwise (implicit) gradient equals GO's
    (Cong et al. 2019, section 3), so turning it off would only raise the variance."""
    if fn.has_rsample or getattr(type(fn), "has_rsample", False) is True:
        return True
    return any(type(fn).rsample is family.rsample for family in IMPLICIT_FAMILIES)


def _has_cdf(fn: tdist.Distribution) -> bool:
    return type(fn).cdf is not tdist.Distribution.cdf


def _raw_form(rule: rules.GORule) -> rules.GORule:
    return getattr(rule, "raw_form", rule)


def get_go_rule(
    fn: tdist.Distribution, categorical_form: CategoricalForm = "local"
) -> rules.GORule | None:
    """The GO rule for a (possibly wrapped) distribution, or ``None`` if it has none.

    :param categorical_form: ``"local"`` (default) analytically sums out each element of
        a finite support (lower variance, ``K − 1`` evaluations of ``f`` per element);
        ``"raw"`` uses Theorem 1 directly (one evaluation per element).
    """
    if categorical_form not in ("local", "raw"):
        raise ValueError(f"categorical_form must be 'local' or 'raw', got {categorical_form!r}")
    base = unwrap_distribution(fn)
    for cls in type(base).__mro__:
        rule = _REGISTRY.get(cls)
        if rule is not None:
            return _raw_form(rule) if categorical_form == "raw" else rule
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

register_go_rule(tdist.Bernoulli, rules.BernoulliLocal())
register_go_rule(tdist.Categorical, rules.CategoricalLocal())
register_go_rule(tdist.OneHotCategorical, rules.OneHotCategoricalLocal())
register_go_rule(tdist.Poisson, rules.PoissonRule())
register_go_rule(tdist.Geometric, rules.GeometricRule())
register_go_rule(tdist.Binomial, rules.BinomialRule())
register_go_rule(tdist.NegativeBinomial, rules.NegativeBinomialRule())
register_go_rule(GammaPoisson, rules.GammaPoissonRule())

__all__ = [
    "CategoricalForm",
    "IMPLICIT_FAMILIES",
    "get_go_rule",
    "has_pathwise_sample",
    "register_go_rule",
    "unwrap_distribution",
]
