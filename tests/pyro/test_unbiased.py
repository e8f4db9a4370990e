"""Unbiasedness of TraceGO_ELBO against exact gradients (enumeration, truncated sums,
quadrature, closed-form KL), with tolerances from the measured standard error."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from pyro.distributions import constraints
from torch.distributions import kl_divergence

from pyro_go import TraceGO_ELBO

# --------------------------------------------------------------------------- Bernoulli

WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 1.5])
OBS = torch.tensor(0.7)


def bernoulli_model():
    prior_logits = pyro.param("prior_logits", torch.tensor([0.2, -0.4, 0.1, 0.3]))
    z = pyro.sample("z", dist.Bernoulli(logits=prior_logits).to_event(1))
    mean = torch.tanh((z * WEIGHTS.to(z.device)).sum(-1))
    pyro.sample("x", dist.Normal(mean, 0.5), obs=OBS.to(z.device))


def bernoulli_guide():
    logits = pyro.param("logits", torch.tensor([0.3, -0.2, 0.8, -1.0]))
    pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


def bernoulli_exact_neg_elbo():
    prior_logits, logits = pyro.param("prior_logits"), pyro.param("logits")
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=4):
        z = torch.tensor(bits, device=logits.device)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum()
        log_p = dist.Bernoulli(logits=prior_logits).log_prob(z).sum()
        mean = torch.tanh((z * WEIGHTS.to(z.device)).sum())
        log_p = log_p + dist.Normal(mean, 0.5).log_prob(OBS.to(z.device))
        total = total + log_q.exp() * (log_p - log_q)
    return -total


def bernoulli_params():
    bernoulli_guide()
    bernoulli_model()
    return [pyro.param("logits").unconstrained(), pyro.param("prior_logits").unconstrained()]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_particles": 3, "vectorize_particles": True},
        pytest.param({"num_particles": 3}, marks=pytest.mark.slow),
        pytest.param({"vectorize_perturbations": False}, marks=pytest.mark.slow),
        pytest.param({"chunk_size": 2}, marks=pytest.mark.slow),
    ],
    ids=["default", "vectorized-particles", "particles", "unvectorized", "chunked"],
)
def test_coupled_bernoulli_vector(options):
    params = bernoulli_params()
    exact = exact_gradient(bernoulli_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO(**options)
    samples = gradient_samples(elbo, bernoulli_model, bernoulli_guide, params, 1500)
    assert_unbiased(samples, exact)


def test_loss_is_elbo_estimate():
    params = bernoulli_params()
    exact = -bernoulli_exact_neg_elbo().item()
    elbo = TraceGO_ELBO()
    losses = torch.tensor([elbo.loss(bernoulli_model, bernoulli_guide) for _ in range(3000)])
    assert abs(-losses.mean().item() - exact) < 5 * losses.std().item() / 3000**0.5
    # the surrogate's value is the same estimate as loss() on the same sample
    pyro.set_rng_seed(11)
    estimate = elbo.loss(bernoulli_model, bernoulli_guide)
    pyro.set_rng_seed(11)
    surrogate = elbo.differentiable_loss(bernoulli_model, bernoulli_guide)
    assert surrogate.requires_grad and params[0].requires_grad
    assert surrogate.item() == pytest.approx(estimate, rel=1e-6)


# ------------------------------------------------------------------------- Categorical

CAT_TABLE = torch.tensor([[0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 1.5, 0.0]])


def categorical_model(one_hot):
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    fn = dist.OneHotCategorical(probs) if one_hot else dist.Categorical(probs)
    y = pyro.sample("y", fn.expand([2]).to_event(1))
    labels = y.argmax(-1) if one_hot else y.long()
    score = CAT_TABLE[0][labels[..., 0]] * CAT_TABLE[1][labels[..., 1]]
    pyro.sample("x", dist.Normal(score, 1.0), obs=torch.tensor(1.0))


def categorical_guide(one_hot):
    logits = pyro.param("cat_logits", torch.tensor([[0.1, -0.3, 0.2, 0.0], [0.4, 0.0, -0.2, 0.1]]))
    fn = dist.OneHotCategorical(logits=logits) if one_hot else dist.Categorical(logits=logits)
    pyro.sample("y", fn.to_event(1))


def categorical_exact_neg_elbo():
    logits = pyro.param("cat_logits")
    log_q = torch.log_softmax(logits, -1)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    total = 0.0
    for a, b in itertools.product(range(4), repeat=2):
        lq = log_q[0, a] + log_q[1, b]
        lp = (
            prior[a]
            + prior[b]
            + dist.Normal(CAT_TABLE[0][a] * CAT_TABLE[1][b], 1.0).log_prob(torch.tensor(1.0))
        )
        total = total + lq.exp() * (lp - lq)
    return -total


@pytest.mark.parametrize(
    "one_hot, form",
    [
        (False, "local"),
        (False, "raw"),
        (True, "local"),
        pytest.param(True, "raw", marks=pytest.mark.slow),
    ],
    ids=["categorical-local", "categorical-raw", "one-hot-local", "one-hot-raw"],
)
def test_categorical(one_hot, form):
    categorical_guide(one_hot)
    params = [pyro.param("cat_logits").unconstrained()]
    exact = exact_gradient(categorical_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO(categorical_form=form)
    samples = gradient_samples(
        elbo, lambda: categorical_model(one_hot), lambda: categorical_guide(one_hot), params, 1500
    )
    assert_unbiased(samples, exact)


# ------------------------------------------------------------------ single count sites


def _truncated_neg_elbo(q, p, tail=1e-13):
    """−Σ_k q(k)(log p(k) − log q(k)) over k up to where both tails are below ``tail``."""
    upper = getattr(q.support, "upper_bound", None)
    top = 4000 if upper is None else int(upper) + 1
    k = torch.arange(0, top, dtype=torch.float64)
    log_q = q.log_prob(k)
    log_p = p.log_prob(k)
    keep = (log_q.exp().cumsum(0) < 1 - tail) | (log_p.exp().cumsum(0) < 1 - tail)
    keep[: min(int(keep.sum()) + 20, top)] = True
    return -(log_q.exp() * (log_p - log_q))[keep].sum()


COUNT_CASES = {
    "poisson": (
        lambda: dist.Poisson(
            pyro.param("rate", torch.tensor(3.0), constraint=constraints.positive)
        ),
        lambda: dist.Poisson(torch.tensor(5.0)),
        ["rate"],
    ),
    "geometric": (
        lambda: dist.Geometric(
            pyro.param("probs", torch.tensor(0.3), constraint=constraints.unit_interval)
        ),
        lambda: dist.Geometric(torch.tensor(0.2)),
        ["probs"],
    ),
    "binomial": (
        lambda: dist.Binomial(
            10, pyro.param("probs", torch.tensor(0.3), constraint=constraints.unit_interval)
        ),
        lambda: dist.Binomial(10, torch.tensor(0.6)),
        ["probs"],
    ),
    "negative-binomial-10": (
        lambda: dist.NegativeBinomial(
            pyro.param("r", torch.tensor(4.0), constraint=constraints.positive),
            probs=pyro.param("probs", torch.tensor(0.4), constraint=constraints.unit_interval),
        ),
        lambda: dist.NegativeBinomial(torch.tensor(10.0), probs=torch.tensor(0.2)),
        ["r", "probs"],
    ),
    "negative-binomial-0.5": (
        lambda: dist.NegativeBinomial(
            pyro.param("r", torch.tensor(1.0), constraint=constraints.positive),
            probs=pyro.param("probs", torch.tensor(0.4), constraint=constraints.unit_interval),
        ),
        lambda: dist.NegativeBinomial(torch.tensor(0.5), probs=torch.tensor(0.2)),
        ["r", "probs"],
    ),
    "gamma-poisson": (
        lambda: dist.GammaPoisson(
            pyro.param("alpha", torch.tensor(2.0), constraint=constraints.positive),
            pyro.param("beta", torch.tensor(0.5), constraint=constraints.positive),
        ),
        lambda: dist.GammaPoisson(torch.tensor(3.0), torch.tensor(1.0)),
        ["alpha", "beta"],
    ),
    "zero-inflated-poisson": (
        lambda: dist.ZeroInflatedPoisson(
            pyro.param("rate", torch.tensor(3.0), constraint=constraints.positive),
            gate=pyro.param("gate", torch.tensor(0.3), constraint=constraints.unit_interval),
        ),
        lambda: dist.Poisson(torch.tensor(2.0)),
        ["rate", "gate"],
    ),
}


@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_single_count_site(case):
    make_guide_fn, make_model_fn, names = COUNT_CASES[case]

    def model():
        pyro.sample("z", make_model_fn())

    def guide():
        pyro.sample("z", make_guide_fn())

    guide()
    params = [pyro.param(n).unconstrained() for n in names]
    q64 = _double(make_guide_fn())
    exact = exact_gradient(_truncated_neg_elbo(q64, _double(make_model_fn())), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 2000)
    assert_unbiased(samples, exact)


def _double(fn):
    """The same distribution with float64 parameters (kept on the autograd tape)."""
    if isinstance(fn, dist.ZeroInflatedPoisson):
        return dist.ZeroInflatedPoisson(fn.base_dist.rate.double(), gate=fn.gate.double())
    if isinstance(fn, dist.GammaPoisson):
        return dist.GammaPoisson(fn.concentration.double(), fn.rate.double())
    if isinstance(fn, dist.Binomial):
        return dist.Binomial(fn.total_count.double(), probs=fn.probs.double())
    if isinstance(fn, dist.NegativeBinomial):
        return dist.NegativeBinomial(fn.total_count.double(), probs=fn.probs.double())
    if isinstance(fn, dist.Geometric):
        return dist.Geometric(probs=fn.probs.double())
    return dist.Poisson(fn.rate.double())


# ------------------------------------------------------------------ continuous sites


class NoRsampleNormal(dist.Normal):
    """A Normal that hides its rsample, so GO must use its cdf."""

    has_rsample = False


@pytest.mark.parametrize("family", ["gamma", "gamma-small-shape", "cdf-normal"])
def test_continuous_site(family):
    if family.startswith("gamma"):
        alpha0 = 1.0 if family == "gamma" else 0.01
        target = dist.Gamma(torch.tensor(alpha0), torch.tensor(0.5))

        def make_guide_fn():
            return dist.Gamma(
                pyro.param(
                    "a",
                    torch.tensor(2.0 if family == "gamma" else 0.3),
                    constraint=constraints.positive,
                ),
                pyro.param("b", torch.tensor(1.0), constraint=constraints.positive),
            )

        names = ["a", "b"]
    else:
        target = dist.Normal(torch.tensor(1.0), torch.tensor(2.0))

        def make_guide_fn():
            return NoRsampleNormal(
                pyro.param("loc", torch.tensor(0.0)),
                pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive),
            )

        names = ["loc", "scale"]

    def model():
        pyro.sample("z", target)

    def guide():
        pyro.sample("z", make_guide_fn())

    guide()
    params = [pyro.param(n).unconstrained() for n in names]
    fn = make_guide_fn()
    exact_fn = dist.Normal(fn.loc, fn.scale) if family == "cdf-normal" else fn
    exact = exact_gradient(kl_divergence(exact_fn, target), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 2000)
    assert_unbiased(samples, exact)


# ------------------------------------------------- plates, subsampling, model params

DATA = torch.tensor([0.3, 1.8, -0.4, 2.5, 1.1, 0.0])


def plated_model(subsample_size):
    weights = pyro.param("weights", torch.tensor([1.0, 1.5]))
    with pyro.plate("data", 6, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Bernoulli(torch.tensor([0.3, 0.6])).to_event(1))
        pyro.sample("x", dist.Normal((z * weights).sum(-1), 0.7), obs=DATA[idx])


def plated_guide(subsample_size):
    logits = pyro.param("local_logits", torch.linspace(-1, 1, 12).reshape(6, 2))
    with pyro.plate("data", 6, subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Bernoulli(logits=logits[idx]).to_event(1))


def plated_exact_neg_elbo():
    weights, logits = pyro.param("weights"), pyro.param("local_logits")
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=2):
        z = torch.tensor(bits)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum(-1)
        log_p = dist.Bernoulli(torch.tensor([0.3, 0.6])).log_prob(z).sum(-1)
        log_p = log_p + dist.Normal((z * weights).sum(-1), 0.7).log_prob(DATA)
        total = total + (log_q.exp() * (log_p - log_q)).sum()
    return -total


@pytest.mark.parametrize("subsample_size", [None, 3])
def test_plated_local_latents(subsample_size):
    plated_guide(None)
    plated_model(None)
    params = [pyro.param("local_logits").unconstrained(), pyro.param("weights").unconstrained()]
    exact = exact_gradient(plated_exact_neg_elbo(), params)
    samples = gradient_samples(
        TraceGO_ELBO(), plated_model, plated_guide, params, 2000, subsample_size
    )
    assert_unbiased(samples, exact)


# ------------------------------------- Theorem 3: continuous internal, discrete leaf

X_OBS = torch.tensor(3.0)


def hierarchical_model():
    lam = pyro.sample("lam", dist.Gamma(2.0, 1.0))
    n = pyro.sample("n", dist.Poisson(lam))
    pyro.sample("x", dist.Poisson(n + 0.5), obs=X_OBS)


def hierarchical_guide():
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    b = pyro.param("b", torch.tensor(1.5), constraint=constraints.positive)
    c = pyro.param("c", torch.tensor(1.2), constraint=constraints.positive)
    lam = pyro.sample("lam", dist.Gamma(a, b))
    pyro.sample("n", dist.Poisson(c * lam))


def hierarchical_exact_neg_elbo():
    """Quadrature over λ (trapezoid on a fine grid) of a truncated sum over n."""
    a, b, c = (pyro.param(k).double() for k in "abc")
    lam = torch.linspace(1e-6, 40.0, 20001, dtype=torch.float64)
    n = torch.arange(0, 80, dtype=torch.float64).unsqueeze(-1)
    log_q_lam = dist.Gamma(a, b).log_prob(lam)
    log_q_n = dist.Poisson(c * lam).log_prob(n)
    log_p = (
        dist.Gamma(torch.tensor(2.0, dtype=torch.float64), 1.0).log_prob(lam)
        + dist.Poisson(lam).log_prob(n)
        + dist.Poisson(n + 0.5).log_prob(X_OBS.double())
    )
    inner = (log_q_n.exp() * (log_p - log_q_lam - log_q_n)).sum(0)
    integrand = log_q_lam.exp() * inner
    return -torch.trapezoid(integrand, lam)


def test_statistical_backprop_gamma_to_poisson():
    hierarchical_guide()
    params = [pyro.param(k).unconstrained() for k in "abc"]
    exact = exact_gradient(hierarchical_exact_neg_elbo(), params)
    samples = gradient_samples(TraceGO_ELBO(), hierarchical_model, hierarchical_guide, params, 3000)
    assert_unbiased(samples, exact)
