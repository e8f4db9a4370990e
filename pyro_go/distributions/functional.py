"""GO gradients outside an ELBO: ``go_surrogate(fn, f)``.

For an objective ``E_{y ~ fn}[f(y)]`` whose ``y`` may be discrete (e.g. a generator with
discrete outputs, a policy over actions), :func:`go_surrogate` returns a scalar whose
value is ``f(y)`` for one sample ``y`` and whose gradient is the GO estimate of
``∇ E[f(y)]`` (Theorem 1 of Cong et al. 2019), plus the ordinary gradient of ``f``'s own
parameters at ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Distribution

from pyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from pyro_go.ops.special import naming_count_site


def _evaluate_stack(f: Callable, stack: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    step = chunk_size or stack.shape[0]
    outputs = [f(stack[start : start + step]) for start in range(0, stack.shape[0], step)]
    values = torch.cat(outputs)
    if values.shape != stack.shape[:1]:
        raise ValueError(
            "go_surrogate: f must map a stack of values [n, *value.shape] to a tensor of "
            f"shape [n]; got {tuple(values.shape)} for n = {stack.shape[0]}."
        )
    return values


def go_surrogate(
    fn: Distribution,
    f: Callable[[torch.Tensor], torch.Tensor],
    value: torch.Tensor | None = None,
    *,
    categorical_form: CategoricalForm = "local",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """A one-sample GO surrogate objective for ``E_{y ~ fn}[f(y)]``.

    :param fn: the distribution (any wrapper of a supported family). All its elements
        are treated as coupled: ``f`` is evaluated once per element and alternative.
    :param f: maps a stack of values ``[n, *value.shape]`` to objectives ``[n]``; it
        must broadcast over the leading dim.
    :param value: a sample of ``fn`` to use; drawn if omitted.  Continuous families with
        ``rsample`` must leave it ``None`` (their sample carries its own gradient).
    :param categorical_form: ``"local"`` or ``"raw"`` for Categorical families.
    :param chunk_size: at most this many perturbed values per call of ``f``.
    :returns: a scalar with value ``f(y)`` and gradient the GO estimate.
    """
    rule = get_go_rule(fn, categorical_form)
    if rule is None:
        raise ValueError(
            f"go_surrogate: {type(unwrap_distribution(fn)).__name__} has no GO rule; "
            "register one with pyro_go.register_go_rule."
        )
    if rule.kind == "reparameterized":
        if value is not None:
            raise ValueError(
                "go_surrogate: this distribution has rsample; leave value=None so that the "
                "sample carries its pathwise gradient."
            )
        return f(fn.rsample().unsqueeze(0))[0]
    if value is None:
        value = fn.sample()
    value = value.detach()
    if rule.kind == "cdf":
        base = unwrap_distribution(fn)
        reason = rule.why_not_differentiable(base, value)
        if reason is not None:
            raise ValueError(f"go_surrogate: {type(base).__name__} has no GO gradient ({reason}).")
        return f(rule.surrogate_sample(base, value).unsqueeze(0))[0]

    # discrete: local import keeps the infer package out of distributions' import graph
    from pyro_go.infer.perturbation import DiscreteLeafSite

    site = DiscreteLeafSite("value", rule, {"fn": fn}, value, ())
    with torch.no_grad():
        stack = torch.cat([value.unsqueeze(0), site.perturbed_values(0, site.num_entries)])
        values = _evaluate_stack(f, stack, chunk_size)
    batch_dim = len(fn.batch_shape)
    values = values.reshape(values.shape + (1,) * batch_dim)
    delta = site.delta(values[1:], values[:1])
    with naming_count_site("go_surrogate"):
        term = rule.surrogate(site.base_fn, value, delta).sum()
    return f(value.unsqueeze(0))[0] + (term - term.detach())
