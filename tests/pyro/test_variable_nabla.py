"""Each rule's variable-nabla against an independent ``−∂_η Q(y) / q(y)``.

The reference differentiates the CDF ``Q(y) = Σ_{k≤y} q(k)`` (or its complement
``1 − Σ_{k>y} q(k)`` above the median, where the head sum cancels) in float64 with
autograd through ``log_prob`` only; it never calls the code under test.
"""

import pyro.distributions as dist
import pytest
import torch

from pyro_go.distributions import get_go_rule, register_go_rule, unwrap_distribution
from pyro_go.distributions import rules as go_rules


def reference_nabla(make, params: dict, y: float, tail: int = 200000) -> dict:
    """``−∂Q(y)/∂η / q(y)`` for each float64 leaf parameter, from ``log_prob`` alone."""
    leaves = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()
    }
    fn = make(**leaves)
    log_q_y = fn.log_prob(torch.tensor(y, dtype=torch.float64))
    head = torch.arange(0, y + 1, dtype=torch.float64)
    cdf_head = fn.log_prob(head).exp().sum()
    if cdf_head.item() < 0.5:
        cdf = cdf_head
    else:  # complement over a truncated tail, long enough that the rest is negligible
        upper = (
            1
            if fn.support is dist.constraints.boolean
            else getattr(fn.support, "upper_bound", None)
        )
        length = tail
        while True:
            stop = int(upper) + 1 if upper is not None else int(y) + length
            rest = torch.arange(y + 1, stop, dtype=torch.float64)
            tail_mass = fn.log_prob(rest).exp() if len(rest) else torch.zeros(1).double()
            if upper is not None or tail_mass[-1].item() < 1e-30:
                break
            length *= 4
        if not len(rest):  # top of a finite support: Q(y) = 1 for every parameter
            return {n: 0.0 for n in leaves}
        cdf = 1 - tail_mass.sum()
    names = list(leaves)
    grads = torch.autograd.grad(cdf, [leaves[n] for n in names], allow_unused=True)
    q_y = log_q_y.exp().detach()
    zero = torch.zeros((), dtype=torch.float64)
    return {
        n: (-(zero if g is None else g) / q_y).item() for n, g in zip(names, grads, strict=True)
    }


def code_nabla(fn, y: float, dtype=torch.float64) -> dict:
    rule = get_go_rule(fn)
    nabla = rule.variable_nabla(unwrap_distribution(fn), torch.tensor(y, dtype=dtype))
    return {k: v.item() for k, v in nabla.items()}


def assert_close(got: dict, want: dict, names, rtol: float, atol: float = 1e-10):
    for name in names:
        assert got[name] == pytest.approx(want[name], rel=rtol, abs=atol), (name, got, want)


def negative_binomial(total_count, probs):
    return dist.NegativeBinomial(total_count, probs=probs)


NB_CASES = [
    (r, p, y)
    for r, p in [
        (0.01, 0.2),
        (0.1, 0.5),
        (1.0, 0.9),
        (10.0, 0.2),
        (100.0, 0.5),
        (1000.0, 0.5),
        (1.0, 1e-3),
        (10.0, 0.999),
        (1000.0, 0.9),
    ]
    for y in ("low", "mean", "high")
]


def nb_value(r, p, where):
    mean = r * p / (1 - p)
    sd = (mean / (1 - p)) ** 0.5
    return {
        "low": max(0.0, round(mean - 2 * sd)),
        "mean": round(mean),
        "high": round(mean + 3 * sd),
    }[where]


@pytest.mark.parametrize("r, p, where", NB_CASES)
def test_negative_binomial(r, p, where):
    y = float(nb_value(r, p, where))
    if y > 20000:
        pytest.skip("count beyond 2e4")
    want = reference_nabla(negative_binomial, {"total_count": r, "probs": p}, y)
    fn = dist.NegativeBinomial(
        torch.tensor(r, dtype=torch.float64), probs=torch.tensor(p, dtype=torch.float64)
    )
    assert_close(code_nabla(fn, y), want, ["probs", "total_count"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "rate, y", [(0.5, 0.0), (3.0, 1.0), (3.0, 9.0), (1e4, 9800.0), (1e4, 10300.0)]
)
def test_poisson(rate, y):
    want = reference_nabla(lambda rate: dist.Poisson(rate), {"rate": rate}, y)
    assert_close(
        code_nabla(dist.Poisson(torch.tensor(rate, dtype=torch.float64)), y), want, ["rate"], 1e-6
    )


@pytest.mark.parametrize(
    "p, y", [(1e-4, 3.0), (1e-4, 20000.0), (0.3, 0.0), (0.3, 7.0), (1 - 1e-4, 0.0)]
)
def test_geometric(p, y):
    want = reference_nabla(lambda probs: dist.Geometric(probs=probs), {"probs": p}, y)
    fn = dist.Geometric(probs=torch.tensor(p, dtype=torch.float64))
    assert_close(code_nabla(fn, y), want, ["probs"], 1e-6)


@pytest.mark.parametrize(
    "n, p, y",
    [
        (10, 0.3, 0.0),
        (10, 0.3, 4.0),
        (10, 0.3, 9.0),
        (50, 1e-4, 0.0),
        (50, 1 - 1e-4, 49.0),
        (1000, 0.5, 530.0),
    ],
)
def test_binomial(n, p, y):
    want = reference_nabla(lambda probs: dist.Binomial(n, probs=probs), {"probs": p}, y)
    fn = dist.Binomial(n, probs=torch.tensor(p, dtype=torch.float64))
    assert_close(code_nabla(fn, y), want, ["probs"], 1e-6)


@pytest.mark.parametrize("p, y", [(1e-4, 0.0), (0.3, 0.0), (0.3, 1.0), (1 - 1e-4, 1.0)])
def test_bernoulli(p, y):
    want = reference_nabla(lambda probs: dist.Bernoulli(probs=probs), {"probs": p}, y)
    assert_close(
        code_nabla(dist.Bernoulli(torch.tensor(p, dtype=torch.float64)), y), want, ["probs"], 1e-9
    )


@pytest.mark.parametrize(
    "alpha, beta, y", [(2.0, 0.5, 0.0), (2.0, 0.5, 3.0), (2.0, 0.5, 15.0), (0.05, 0.01, 40.0)]
)
def test_gamma_poisson(alpha, beta, y):
    want = reference_nabla(
        lambda concentration, rate: dist.GammaPoisson(concentration, rate),
        {"concentration": alpha, "rate": beta},
        y,
    )
    fn = dist.GammaPoisson(
        torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)
    )
    assert_close(code_nabla(fn, y), want, ["concentration", "rate"], 1e-6)


GENERIC_CASES = {
    "zero-inflated-poisson": (
        lambda rate, gate: dist.ZeroInflatedPoisson(rate, gate=gate),
        {"rate": 3.0, "gate": 0.3},
    ),
    "zero-inflated-nb": (
        lambda total_count, probs, gate: dist.ZeroInflatedNegativeBinomial(
            total_count, probs=probs, gate=gate
        ),
        {"total_count": 4.0, "probs": 0.4, "gate": 0.2},
    ),
    "beta-binomial": (
        lambda concentration1, concentration0: dist.BetaBinomial(
            concentration1, concentration0, total_count=20
        ),
        {"concentration1": 2.0, "concentration0": 3.0},
    ),
}


@pytest.mark.parametrize("case", list(GENERIC_CASES))
@pytest.mark.parametrize("y", [0.0, 2.0, 6.0])
def test_generic_count_rule(case, y):
    make, params = GENERIC_CASES[case]
    want = reference_nabla(make, params, y)
    leaves = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()
    }
    fn = make(**leaves)
    rule = get_go_rule(fn)
    assert isinstance(rule, go_rules.GenericCountRule)
    # the carrier's gradient w.r.t. the parameter leaves is the variable-nabla
    carrier = rule.carrier(fn, torch.tensor(y, dtype=torch.float64))
    assert carrier.item() == y
    grads = torch.autograd.grad(carrier, list(leaves.values()))
    for name, grad in zip(leaves, grads, strict=False):
        assert grad.item() == pytest.approx(want[name], rel=1e-6, abs=1e-10), name


@pytest.mark.parametrize("labels", [[0, 2, 3]])
def test_categorical_raw(labels):
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    y = torch.tensor(labels)
    got = go_rules.CategoricalRaw().variable_nabla(dist.Categorical(probs), y)["probs"]
    one_hot = dist.OneHotCategorical(probs)
    got_one_hot = go_rules.OneHotCategoricalRaw().variable_nabla(
        one_hot, torch.nn.functional.one_hot(y, 4).double()
    )["probs"]
    for row, label in enumerate(labels):
        # Q(y) = Σ_{k≤y} p_k with free coordinates: ∂Q/∂p_j = 1{j ≤ y}
        want = torch.tensor(
            [-(1.0 if j <= label else 0.0) / probs[label] for j in range(4)], dtype=torch.float64
        )
        torch.testing.assert_close(got[row], want)
        torch.testing.assert_close(got_one_hot[row], want)


@pytest.mark.parametrize(
    "name", ["poisson", "negative-binomial", "binomial", "geometric", "bernoulli"]
)
def test_float32_closed_forms(name):
    """float32 inputs agree with the float64 reference to ~1e-4 relative (float32 has
    ~7 digits; the NB r-sum runs in float64 internally)."""
    cases = {
        "poisson": (lambda rate: dist.Poisson(rate), {"rate": 7.0}, 12.0),
        "negative-binomial": (negative_binomial, {"total_count": 0.5, "probs": 0.9}, 30.0),
        "binomial": (lambda probs: dist.Binomial(30, probs=probs), {"probs": 0.7}, 19.0),
        "geometric": (lambda probs: dist.Geometric(probs=probs), {"probs": 0.05}, 40.0),
        "bernoulli": (lambda probs: dist.Bernoulli(probs=probs), {"probs": 0.999}, 0.0),
    }
    make, params, y = cases[name]
    want = reference_nabla(make, params, y)
    fn = make(**{k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()})
    nabla = get_go_rule(fn).variable_nabla(unwrap_distribution(fn), torch.tensor(y))
    for key, value in nabla.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(want[key], rel=1e-4), key


@pytest.mark.parametrize(
    "make, cdf_params",
    [
        (lambda loc, scale: dist.Normal(loc, scale), {"loc": 0.3, "scale": 1.7}),
        (lambda rate: dist.Exponential(rate), {"rate": 0.8}),
        (lambda loc, scale: dist.Laplace(loc, scale), {"loc": -0.2, "scale": 0.5}),
        (lambda loc, scale: dist.Gumbel(loc, scale), {"loc": 0.1, "scale": 2.0}),
    ],
)
@pytest.mark.parametrize("y", [0.4, 1.9])
def test_cdf_surrogate(make, cdf_params, y):
    leaves = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in cdf_params.items()
    }
    fn = make(**leaves)
    value = torch.tensor(y, dtype=torch.float64)
    sample = go_rules.CDFSurrogate().surrogate_sample(fn, value)
    assert sample.item() == y
    got = torch.autograd.grad(sample, list(leaves.values()))
    cdf_grads = torch.autograd.grad(fn.cdf(value), list(leaves.values()))
    density = fn.log_prob(value).exp()
    for g, c in zip(got, cdf_grads, strict=False):
        assert g.item() == pytest.approx((-c / density).item(), rel=1e-10)


def test_wrappers_are_seen_through():
    rate = torch.tensor(2.0)
    wrapped = dist.Poisson(rate).expand([3]).to_event(1)
    assert isinstance(get_go_rule(wrapped), go_rules.PoissonRule)
    assert isinstance(unwrap_distribution(wrapped), dist.Poisson)
    masked = dist.Poisson(rate).mask(torch.tensor(False))
    assert isinstance(get_go_rule(masked), go_rules.PoissonRule)
    assert isinstance(get_go_rule(dist.Categorical(torch.ones(3)), "raw"), go_rules.CategoricalRaw)


def test_registry():
    class MyPoisson(dist.Poisson):
        pass

    class MyRule(go_rules.PoissonRule):
        pass

    rule = register_go_rule(MyPoisson, MyRule())
    assert get_go_rule(MyPoisson(torch.tensor(1.0))) is rule
    assert isinstance(get_go_rule(dist.Poisson(torch.tensor(1.0))), go_rules.PoissonRule)
    assert not isinstance(get_go_rule(dist.Poisson(torch.tensor(1.0))), MyRule)
    assert get_go_rule(dist.VonMises(0.0, 1.0)) is None
    assert get_go_rule(dist.Categorical(torch.ones(3)).to_event(0)) is not None
    with pytest.raises(TypeError):
        register_go_rule(int, MyRule())
    with pytest.raises(TypeError):
        register_go_rule(MyPoisson, object())
