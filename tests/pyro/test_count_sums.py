"""Count sums at bounded cost: the negative binomial's ``g_r`` at counts of 1e6 and means
of 1e10 against float64 / 30-digit references, costs that do not depend on the other
elements' counts, and an error naming the site where a generic sum is out of reach."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from count_references import MEAN_1E10, nb_nabla_log_space_sum, nb_nabla_mpmath
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_go import TraceGO_ELBO, go_surrogate
from pyro_go.distributions import get_go_rule
from pyro_go.distributions import rules as go_rules
from pyro_go.ops.quadrature_nodes import EXACT_HEAD_COUNTS, EXP_EXP, TANH_SINH
from pyro_go.ops.special import (
    COUNT_SUM_CAP,
    COUNT_SUM_WINDOW,
    CountSumOutOfReach,
    negative_binomial_total_count_nabla,
)


def f64(value):
    return torch.tensor(value, dtype=torch.float64)


def nabla(y, r, p):
    return negative_binomial_total_count_nabla(f64(y), f64(r), f64(p)).item()


@pytest.mark.parametrize(
    "r, p, y",
    [
        (5.0, MEAN_1E10, 2e9),
        (5.0, MEAN_1E10, 1e10),
        (5.0, MEAN_1E10, 3e10),
        (0.5, 1 - 1e-6, 1e6),
        (2.5, 1e6 / (1e6 + 2.5), 1e6),
        (1e6, 0.5, 1e6),
        (1e-3, 0.999, 1e6),
    ],
)
def test_negative_binomial_large_counts_against_mpmath(r, p, y):
    assert nabla(y, r, p) == pytest.approx(nb_nabla_mpmath(y, r, p), rel=1e-9)


@pytest.mark.parametrize("r, p, y", [(2.5, 1e6 / (1e6 + 2.5), 500000), (1e6, 0.5, 1001000)])
def test_negative_binomial_count_1e6_against_log_space_sum(r, p, y):
    """An independent float64 check at y ~ 1e6: the sum itself, term by term."""
    assert nabla(y, r, p) == pytest.approx(nb_nabla_log_space_sum(y, r, p), rel=1e-7)


def test_gamma_poisson_mean_1e10():
    """``GammaPoisson(α, β)`` with ``β = 5e-10``: ``1 − p = β/(1 + β)`` enters exactly."""
    alpha, beta = f64(5.0), f64(5e-10)
    fn = dist.GammaPoisson(alpha, beta)
    got = get_go_rule(fn).variable_nabla(fn, f64(8e9))["concentration"].item()
    want = nb_nabla_mpmath(8e9, 5.0, 1 / (1 + 5e-10), complement=5e-10 / (1 + 5e-10))
    assert got == pytest.approx(want, rel=1e-9)


def test_negative_binomial_logits_mean_1e10():
    """Given logits, ``1 − p = σ(−logits)`` enters exactly (``1 − probs`` would not)."""
    logits = f64(22.0)
    fn = dist.NegativeBinomial(f64(5.0), logits=logits)
    got = get_go_rule(fn).variable_nabla(fn, f64(1e10))["total_count"].item()
    complement = torch.sigmoid(-logits).item()
    want = nb_nabla_mpmath(1e10, 5.0, 1 - complement, complement=complement)
    assert got == pytest.approx(want, rel=1e-9)


def grid_head_sum(y, r, p):
    """The previous implementation: ``Σ_{k≤y}`` on a grid ``0..max(y)`` shared by all."""
    grid = torch.arange(int(y.max()) + 1, dtype=torch.float64).unsqueeze(-1)
    k = torch.minimum(grid, y)
    log_q = torch.lgamma(k + r) - torch.lgamma(k + 1) + torch.xlogy(k, p)
    log_q_y = torch.lgamma(y + r) - torch.lgamma(y + 1) + torch.xlogy(y, p)
    weights = torch.where(grid <= y, (log_q - log_q_y).exp(), 0.0)
    return -(weights * (torch.digamma(k + r) - torch.digamma(r) + torch.log1p(-p))).sum(0)


@pytest.mark.parametrize("r, p", [(2.0, 0.6), (1.0, 0.9), (10.0, 0.5), (300.0, 0.3), (5.0, 0.999)])
def test_small_counts_keep_the_grid_sum(r, p):
    """Where the grid sum was right (every term of one sign), the new sum agrees with it
    to rounding."""
    y = torch.arange(0, EXACT_HEAD_COUNTS + 1, dtype=torch.float64)
    r, p = f64(r), f64(p)
    one_sign = torch.log1p(-p) < torch.digamma(r) - torch.digamma(r + y + 1)
    assert one_sign.sum() >= 2
    got = negative_binomial_total_count_nabla(y, r, p)
    torch.testing.assert_close(got[one_sign], grid_head_sum(y, r, p)[one_sign], rtol=1e-11, atol=0)


@pytest.mark.parametrize("y", [20, 64, 191])
def test_upper_tail_small_counts(y):
    """Far above the mean the grid sum cancels (it returned −5e58 at y = 100 here); the
    sum on the other side does not."""
    assert nabla(y, 0.01, 0.2) == pytest.approx(nb_nabla_mpmath(y, 0.01, 0.2), rel=1e-10)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_negative_binomial_cost_ignores_other_counts():
    """One draw of mean 1e10 among 999 small ones: no tensor grows with the large count
    (the grid ``0..max(y)`` asked for 81 GB here), and each element's nabla is the one it
    gets alone."""
    small = torch.arange(999.0, dtype=torch.float64) % 17  # both sides of the mean of 2
    y = torch.cat([small, f64([1e10])])
    r = torch.cat([torch.full((999,), 3.0), f64([5.0])]).double()
    p = torch.cat([torch.full((999,), 0.4), f64([MEAN_1E10])]).double()
    with LargestTensor() as largest:
        got = negative_binomial_total_count_nabla(y, r, p)
    nodes = len(EXP_EXP[0]) + len(TANH_SINH[0])
    assert largest.numel <= max(nodes, EXACT_HEAD_COUNTS + 1) * len(y)
    alone = [negative_binomial_total_count_nabla(y[i], r[i], p[i]) for i in (0, 1, 2, 999)]
    torch.testing.assert_close(got[[0, 1, 2, 999]], torch.stack(alone), rtol=1e-13, atol=0)


def test_generic_rule_cost_ignores_other_counts():
    """A ZeroInflatedPoisson batch with one count far in the tail: windows of
    ``COUNT_SUM_WINDOW`` terms over the batch, never ``max(y) + 1``."""
    rate = torch.full((1000,), 3.0, dtype=torch.float64, requires_grad=True)
    fn = dist.ZeroInflatedPoisson(rate, gate=f64(0.2))
    y = torch.arange(1000.0, dtype=torch.float64) % 9
    y[-1] = 1e6
    rule = get_go_rule(fn)
    assert isinstance(rule, go_rules.GenericCountRule)
    with LargestTensor() as largest:
        surrogate = rule.surrogate(fn, y, torch.ones(1, 1000, dtype=torch.float64))
    assert largest.numel <= COUNT_SUM_WINDOW * len(y)
    assert torch.isfinite(torch.autograd.grad(surrogate.sum(), rate)[0]).all()


@pytest.mark.parametrize("y", [2.0, 40.0, 700.0, 3000.0])
def test_generic_rule_matches_negative_binomial_closed_form(y):
    """The generic windows (head or tail, whichever ends) against the closed form."""
    r = f64(4.0).requires_grad_()
    fn = dist.NegativeBinomial(r, probs=f64(0.995))
    generic = go_rules.GenericCountRule().variable_nabla(fn, f64(y))["total_count"]
    closed = go_rules.NegativeBinomialRule().variable_nabla(fn, f64(y))["total_count"]
    assert generic.item() == pytest.approx(closed.item(), rel=1e-9)


def test_generic_rule_large_poisson_count():
    """``Poisson(1e6)`` through the generic rule at y = 1e6 (the tail ends within the
    cap; the head would need 1e6 terms): ``g_λ = 1``."""
    rate = f64(1e6).requires_grad_()
    fn = dist.ZeroInflatedPoisson(rate, gate=f64(1e-300))
    g = go_rules.GenericCountRule().variable_nabla(fn, f64(1e6))
    assert g["rate"].item() == pytest.approx(1.0, rel=1e-9)


def out_of_reach_guide():
    rate = pyro.param("rate", f64(1e8))
    pyro.sample("z", dist.ZeroInflatedPoisson(rate, gate=f64(1e-300)))


def out_of_reach_model():
    pyro.sample("z", dist.Poisson(f64(1e8)))


def test_generic_rule_out_of_reach_names_the_site():
    """A count of ~1e8 with sd 1e4: the head needs 1e8 terms and the tail ~1e5, both
    beyond ``COUNT_SUM_CAP``."""
    pyro.clear_param_store()
    with pytest.raises(CountSumOutOfReach, match="TraceGO_ELBO: guide site 'z'") as error:
        TraceGO_ELBO().differentiable_loss(out_of_reach_model, out_of_reach_guide)
    assert f"more than {COUNT_SUM_CAP} terms" in str(error.value)
    assert "register_go_rule" in str(error.value)
    fn = dist.ZeroInflatedPoisson(f64(1e8).requires_grad_(), gate=f64(1e-300))
    with pytest.raises(ValueError, match="go_surrogate"):
        go_surrogate(fn, lambda y: y, value=f64(1e8))
