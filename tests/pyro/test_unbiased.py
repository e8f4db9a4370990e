"""Unbiasedness of TraceGO_ELBO against exact gradients (enumeration, truncated sums,
quadrature, closed-form KL), with tolerances from the measured standard error."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from pyro.distributions import constraints
from shared_cases import BERNOULLI, CATEGORICAL, CONTINUOUS, COUNT, HIERARCHICAL, PLATED
from torch.distributions import kl_divergence

from pyro_go import TraceGO_ELBO

# --------------------------------------------------------------------------- Bernoulli

WEIGHTS = torch.tensor(BERNOULLI["weights"])
OBS = torch.tensor(BERNOULLI["obs"])
SCALE = BERNOULLI["scale"]


def bernoulli_model():
    prior_logits = pyro.param("prior_logits", torch.tensor(BERNOULLI["prior_logits"]))
    z = pyro.sample("z", dist.Bernoulli(logits=prior_logits).to_event(1))
    mean = torch.tanh((z * WEIGHTS.to(z.device)).sum(-1))
    pyro.sample("x", dist.Normal(mean, SCALE), obs=OBS.to(z.device))


def bernoulli_guide():
    logits = pyro.param("logits", torch.tensor(BERNOULLI["logits"]))
    pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


def bernoulli_exact_neg_elbo():
    prior_logits, logits = pyro.param("prior_logits"), pyro.param("logits")
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=4):
        z = torch.tensor(bits, device=logits.device)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum()
        log_p = dist.Bernoulli(logits=prior_logits).log_prob(z).sum()
        mean = torch.tanh((z * WEIGHTS.to(z.device)).sum())
        log_p = log_p + dist.Normal(mean, SCALE).log_prob(OBS.to(z.device))
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

CAT_TABLE = torch.tensor(CATEGORICAL["table"])
CAT_PRIOR = torch.tensor(CATEGORICAL["prior"])
CAT_OBS = torch.tensor(CATEGORICAL["obs"])


def categorical_model(one_hot):
    fn = dist.OneHotCategorical(CAT_PRIOR) if one_hot else dist.Categorical(CAT_PRIOR)
    y = pyro.sample("y", fn.expand([2]).to_event(1))
    labels = y.argmax(-1) if one_hot else y.long()
    score = CAT_TABLE[0][labels[..., 0]] * CAT_TABLE[1][labels[..., 1]]
    pyro.sample("x", dist.Normal(score, 1.0), obs=CAT_OBS)


def categorical_guide(one_hot):
    logits = pyro.param("cat_logits", torch.tensor(CATEGORICAL["logits"]))
    fn = dist.OneHotCategorical(logits=logits) if one_hot else dist.Categorical(logits=logits)
    pyro.sample("y", fn.to_event(1))


def categorical_exact_neg_elbo():
    logits = pyro.param("cat_logits")
    log_q = torch.log_softmax(logits, -1)
    prior = CAT_PRIOR.log()
    total = 0.0
    for a, b in itertools.product(range(4), repeat=2):
        lq = log_q[0, a] + log_q[1, b]
        lp = (
            prior[a]
            + prior[b]
            + dist.Normal(CAT_TABLE[0][a] * CAT_TABLE[1][b], 1.0).log_prob(CAT_OBS)
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


_POSITIVE = {"rate", "concentration", "total_count"}


def _count_param(name, value):
    if name == "total_count" and isinstance(value, int):
        return value  # Binomial's number of trials is not trained
    constraint = constraints.positive if name in _POSITIVE else constraints.unit_interval
    return pyro.param(name, torch.tensor(value), constraint=constraint)


def _count_distribution(family, p):
    if family == "poisson":
        return dist.Poisson(p["rate"])
    if family == "geometric":
        return dist.Geometric(p["probs"])
    if family == "binomial":
        return dist.Binomial(p["total_count"], p["probs"])
    if family == "negative-binomial":
        return dist.NegativeBinomial(p["total_count"], probs=p["probs"])
    if family == "gamma-poisson":
        return dist.GammaPoisson(p["concentration"], p["rate"])
    if p["gate"] == 0.0:
        return dist.Poisson(torch.as_tensor(p["rate"]))
    return dist.ZeroInflatedPoisson(p["rate"], gate=p["gate"])


def _count_case(case):
    """Guide-distribution maker (with trained params), model distribution maker, and
    the names of the trained params."""
    spec = COUNT[case]

    def make_guide_fn():
        params = {name: _count_param(name, value) for name, value in spec["guide"].items()}
        return _count_distribution(spec["family"], params)

    def make_model_fn():
        params = {name: torch.as_tensor(value) for name, value in spec["model"].items()}
        if spec["family"] == "binomial":
            params["total_count"] = spec["model"]["total_count"]
        return _count_distribution(spec["family"], params)

    trained = [n for n, v in spec["guide"].items() if not isinstance(v, int)]
    return make_guide_fn, make_model_fn, trained


@pytest.mark.parametrize("case", list(COUNT))
def test_single_count_site(case):
    make_guide_fn, make_model_fn, names = _count_case(case)

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


@pytest.mark.parametrize("case", list(CONTINUOUS))
def test_continuous_site(case):
    spec = CONTINUOUS[case]
    family = spec["family"]
    target_params = [torch.tensor(v) for v in spec["target"]]
    if family == "gamma":
        target = dist.Gamma(*target_params)
        family_class, names = dist.Gamma, ["a", "b"]
        constraint = [constraints.positive, constraints.positive]
    else:
        target = dist.Normal(*target_params)
        family_class, names = NoRsampleNormal, ["loc", "scale"]
        constraint = [constraints.real, constraints.positive]

    def make_guide_fn():
        return family_class(
            *(
                pyro.param(n, torch.tensor(v), constraint=c)
                for n, v, c in zip(names, spec["guide"], constraint, strict=True)
            )
        )

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

DATA = torch.tensor(PLATED["data"])
PLATED_PRIOR = torch.tensor(PLATED["prior"])


def plated_model(subsample_size):
    weights = pyro.param("weights", torch.tensor(PLATED["weights"]))
    with pyro.plate("data", 6, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Bernoulli(PLATED_PRIOR).to_event(1))
        pyro.sample("x", dist.Normal((z * weights).sum(-1), PLATED["scale"]), obs=DATA[idx])


def plated_guide(subsample_size):
    logits = pyro.param("local_logits", torch.tensor(PLATED["logits"]))
    with pyro.plate("data", 6, subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Bernoulli(logits=logits[idx]).to_event(1))


def plated_exact_neg_elbo():
    weights, logits = pyro.param("weights"), pyro.param("local_logits")
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=2):
        z = torch.tensor(bits)
        log_q = dist.Bernoulli(logits=logits).log_prob(z).sum(-1)
        log_p = dist.Bernoulli(PLATED_PRIOR).log_prob(z).sum(-1)
        log_p = log_p + dist.Normal((z * weights).sum(-1), PLATED["scale"]).log_prob(DATA)
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

X_OBS = torch.tensor(HIERARCHICAL["obs"])


def hierarchical_model():
    lam = pyro.sample("lam", dist.Gamma(2.0, 1.0))
    n = pyro.sample("n", dist.Poisson(lam))
    pyro.sample("x", dist.Poisson(n + 0.5), obs=X_OBS)


def hierarchical_guide():
    a, b, c = (
        pyro.param(k, torch.tensor(HIERARCHICAL[k]), constraint=constraints.positive) for k in "abc"
    )
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
