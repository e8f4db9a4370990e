"""Unbiasedness of numpyro_go.TraceGO_ELBO against exact gradients, on the problems of
``tests/shared_cases.py`` that the Pyro backend solves too."""

import itertools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax_helpers import exact_gradient, gradient_samples
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence
from shared_cases import BERNOULLI, CATEGORICAL, CONTINUOUS, COUNT, HIERARCHICAL, PLATED
from unbiasedness import assert_unbiased

from numpyro_go import TraceGO_ELBO

# --------------------------------------------------------------------------- Bernoulli


def bernoulli_model():
    prior_logits = numpyro.param("prior_logits", jnp.array(BERNOULLI["prior_logits"]))
    z = numpyro.sample("z", dist.Bernoulli(logits=prior_logits).to_event(1))
    mean = jnp.tanh(jnp.sum(z * jnp.array(BERNOULLI["weights"]), -1))
    numpyro.sample("x", dist.Normal(mean, BERNOULLI["scale"]), obs=BERNOULLI["obs"])


def bernoulli_guide():
    logits = numpyro.param("logits", jnp.array(BERNOULLI["logits"]))
    numpyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


BERNOULLI_PARAMS = {
    "logits": jnp.array(BERNOULLI["logits"]),
    "prior_logits": jnp.array(BERNOULLI["prior_logits"]),
}


def bernoulli_exact_neg_elbo(params):
    total = 0.0
    weights = jnp.array(BERNOULLI["weights"])
    for bits in itertools.product([0.0, 1.0], repeat=4):
        z = jnp.array(bits)
        log_q = dist.Bernoulli(logits=params["logits"]).log_prob(z).sum()
        log_p = dist.Bernoulli(logits=params["prior_logits"]).log_prob(z).sum()
        mean = jnp.tanh(jnp.sum(z * weights))
        log_p = log_p + dist.Normal(mean, BERNOULLI["scale"]).log_prob(BERNOULLI["obs"])
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return -total


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_particles": 3},
        {"num_particles": 3, "vectorize_particles": False},
        {"chunk_size": 2},
    ],
    ids=["default", "vectorized-particles", "mapped-particles", "chunked"],
)
def test_coupled_bernoulli_vector(options):
    exact = exact_gradient(bernoulli_exact_neg_elbo, BERNOULLI_PARAMS)
    samples = gradient_samples(
        TraceGO_ELBO(**options), bernoulli_model, bernoulli_guide, BERNOULLI_PARAMS, 2000
    )
    assert_unbiased(samples, exact)


def test_loss_is_elbo_estimate():
    exact = -float(bernoulli_exact_neg_elbo(BERNOULLI_PARAMS))
    elbo = TraceGO_ELBO()
    keys = jax.random.split(jax.random.PRNGKey(1), 3000)
    losses = jax.vmap(lambda k: elbo.loss(k, BERNOULLI_PARAMS, bernoulli_model, bernoulli_guide))(
        keys
    )
    assert abs(-float(losses.mean()) - exact) < 5 * float(losses.std()) / 3000**0.5


# ------------------------------------------------------------------------- Categorical


def categorical_model():
    prior = jnp.array(CATEGORICAL["prior"])
    y = numpyro.sample("y", dist.Categorical(probs=prior).expand([2]).to_event(1))
    table = jnp.array(CATEGORICAL["table"])
    score = table[0][y[..., 0]] * table[1][y[..., 1]]
    numpyro.sample("x", dist.Normal(score, 1.0), obs=CATEGORICAL["obs"])


def categorical_guide():
    logits = numpyro.param("cat_logits", jnp.array(CATEGORICAL["logits"]))
    numpyro.sample("y", dist.Categorical(logits=logits).to_event(1))


def categorical_exact_neg_elbo(params):
    log_q = jax.nn.log_softmax(params["cat_logits"], -1)
    prior = jnp.log(jnp.array(CATEGORICAL["prior"]))
    table = jnp.array(CATEGORICAL["table"])
    total = 0.0
    for a, b in itertools.product(range(4), repeat=2):
        lq = log_q[0, a] + log_q[1, b]
        likelihood = dist.Normal(table[0][a] * table[1][b], 1.0).log_prob(CATEGORICAL["obs"])
        total = total + jnp.exp(lq) * (prior[a] + prior[b] + likelihood - lq)
    return -total


@pytest.mark.parametrize("form", ["local", "raw"])
def test_categorical(form):
    params = {"cat_logits": jnp.array(CATEGORICAL["logits"])}
    exact = exact_gradient(categorical_exact_neg_elbo, params)
    elbo = TraceGO_ELBO(categorical_form=form)
    samples = gradient_samples(elbo, categorical_model, categorical_guide, params, 2000)
    assert_unbiased(samples, exact)


# ------------------------------------------------------------------ single count sites


def count_distribution(family, p):
    if family == "poisson":
        return dist.Poisson(p["rate"])
    if family == "geometric":
        return dist.Geometric(probs=p["probs"])
    if family == "binomial":
        return dist.Binomial(p["total_count"], probs=p["probs"])
    if family == "negative-binomial":
        return dist.NegativeBinomialProbs(p["total_count"], p["probs"])
    if family == "gamma-poisson":
        return dist.GammaPoisson(p["concentration"], p["rate"])
    if isinstance(p["gate"], float) and p["gate"] == 0.0:
        return dist.Poisson(p["rate"])
    return dist.ZeroInflatedPoisson(gate=p["gate"], rate=p["rate"])


def _trained(spec):
    return {n: jnp.asarray(v) for n, v in spec["guide"].items() if not isinstance(v, int)}


def truncated_neg_elbo(q, p, top):
    """−Σ_k q(k)(log p(k) − log q(k)) for k < top (both tails negligible beyond)."""
    k = jnp.arange(top, dtype=jnp.float64)
    log_q, log_p = q.log_prob(k), p.log_prob(k)
    return -jnp.sum(jnp.where(jnp.isfinite(log_q), jnp.exp(log_q) * (log_p - log_q), 0.0))


@pytest.mark.parametrize("case", list(COUNT))
def test_single_count_site(case):
    spec = COUNT[case]
    family = spec["family"]

    def guide_fn(params):
        return count_distribution(family, dict(spec["guide"], **params))

    def model():
        numpyro.sample("z", count_distribution(family, spec["model"]))

    def guide():
        values = {n: numpyro.param(n, v) for n, v in _trained(spec).items()}
        numpyro.sample("z", guide_fn(values))

    params = _trained(spec)
    top = int(spec["guide"]["total_count"]) + 1 if family == "binomial" else 1500
    exact = exact_gradient(
        lambda p: truncated_neg_elbo(guide_fn(p), count_distribution(family, spec["model"]), top),
        params,
    )
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 3000)
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("parameterisation", ["NegativeBinomial2", "NegativeBinomialLogits"])
def test_negative_binomial_parameterisations(parameterisation):
    """NumPyro's other NB classes reach their own parameters through GammaPoisson's rule."""
    if parameterisation == "NegativeBinomial2":
        params = {"mean": jnp.array(3.0), "concentration": jnp.array(1.5)}

        def guide_fn(p):
            return dist.NegativeBinomial2(p["mean"], p["concentration"])
    else:
        params = {"total_count": jnp.array(2.0), "logits": jnp.array(0.5)}

        def guide_fn(p):
            return dist.NegativeBinomialLogits(p["total_count"], p["logits"])

    prior = dist.NegativeBinomial2(6.0, 3.0)

    def model():
        numpyro.sample("z", prior)

    def guide():
        numpyro.sample("z", guide_fn({n: numpyro.param(n, v) for n, v in params.items()}))

    exact = exact_gradient(lambda p: truncated_neg_elbo(guide_fn(p), prior, 1500), params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 3000)
    assert_unbiased(samples, exact)


# ------------------------------------------------------------------ continuous sites


class NoRsampleNormal(dist.Normal):
    """A Normal that hides its pathwise sampler, so GO must use its cdf."""

    reparametrized_params = []


@pytest.mark.parametrize("case", list(CONTINUOUS))
def test_continuous_site(case):
    spec = CONTINUOUS[case]
    if spec["family"] == "gamma":
        family, target = dist.Gamma, dist.Gamma(*spec["target"])
        names = ["a", "b"]
    else:
        family, target = NoRsampleNormal, dist.Normal(*spec["target"])
        names = ["loc", "scale"]
    params = {n: jnp.asarray(v) for n, v in zip(names, spec["guide"], strict=True)}

    def model():
        numpyro.sample("z", target)

    def guide():
        numpyro.sample("z", family(*(numpyro.param(n, params[n]) for n in names)))

    def kl(p):
        if spec["family"] == "gamma":
            return kl_divergence(dist.Gamma(p["a"], p["b"]), dist.Gamma(*spec["target"]))
        return kl_divergence(dist.Normal(p["loc"], p["scale"]), dist.Normal(*spec["target"]))

    exact = exact_gradient(kl, params)
    samples = gradient_samples(TraceGO_ELBO(), model, guide, params, 3000)
    assert_unbiased(samples, exact)


# ------------------------------------------------- plates, subsampling, model params


def plated_model(subsample_size):
    weights = numpyro.param("weights", jnp.array(PLATED["weights"]))
    data = jnp.array(PLATED["data"])
    with numpyro.plate("data", 6, subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Bernoulli(jnp.array(PLATED["prior"])).to_event(1))
        mean = jnp.sum(z * weights, -1)
        numpyro.sample("x", dist.Normal(mean, PLATED["scale"]), obs=data[idx])


def plated_guide(subsample_size):
    logits = numpyro.param("local_logits", jnp.array(PLATED["logits"]))
    with numpyro.plate("data", 6, subsample_size=subsample_size) as idx:
        numpyro.sample("z", dist.Bernoulli(logits=logits[idx]).to_event(1))


def plated_exact_neg_elbo(params):
    total = 0.0
    prior = jnp.array(PLATED["prior"])
    for bits in itertools.product([0.0, 1.0], repeat=2):
        z = jnp.array(bits)
        log_q = dist.Bernoulli(logits=params["local_logits"]).log_prob(z).sum(-1)
        log_p = dist.Bernoulli(prior).log_prob(z).sum(-1)
        mean = jnp.sum(z * params["weights"])
        log_p = log_p + dist.Normal(mean, PLATED["scale"]).log_prob(jnp.array(PLATED["data"]))
        total = total + jnp.sum(jnp.exp(log_q) * (log_p - log_q))
    return -total


@pytest.mark.parametrize("subsample_size", [None, 3])
def test_plated_local_latents(subsample_size):
    params = {
        "local_logits": jnp.array(PLATED["logits"]),
        "weights": jnp.array(PLATED["weights"]),
    }
    exact = exact_gradient(plated_exact_neg_elbo, params)
    samples = gradient_samples(
        TraceGO_ELBO(), plated_model, plated_guide, params, 3000, subsample_size
    )
    assert_unbiased(samples, exact)


# ------------------------------------- Theorem 3: continuous internal, discrete leaf


def hierarchical_model():
    lam = numpyro.sample("lam", dist.Gamma(2.0, 1.0))
    n = numpyro.sample("n", dist.Poisson(lam))
    numpyro.sample("x", dist.Poisson(n + 0.5), obs=HIERARCHICAL["obs"])


def hierarchical_guide():
    a, b, c = (numpyro.param(k, HIERARCHICAL[k], constraint=constraints.positive) for k in "abc")
    lam = numpyro.sample("lam", dist.Gamma(a, b))
    numpyro.sample("n", dist.Poisson(c * lam))


def hierarchical_exact_neg_elbo(params):
    """Quadrature over λ (trapezoid on a fine grid) of a truncated sum over n."""
    lam = jnp.linspace(1e-6, 40.0, 20001)
    n = jnp.arange(0, 80.0)[:, None]
    log_q_lam = dist.Gamma(params["a"], params["b"]).log_prob(lam)
    log_q_n = dist.Poisson(params["c"] * lam).log_prob(n)
    log_p = (
        dist.Gamma(2.0, 1.0).log_prob(lam)
        + dist.Poisson(lam).log_prob(n)
        + dist.Poisson(n + 0.5).log_prob(HIERARCHICAL["obs"])
    )
    inner = jnp.sum(jnp.exp(log_q_n) * (log_p - log_q_lam - log_q_n), 0)
    return -jnp.trapezoid(jnp.exp(log_q_lam) * inner, lam)


def test_statistical_backprop_gamma_to_poisson():
    params = {k: jnp.asarray(HIERARCHICAL[k]) for k in "abc"}
    exact = exact_gradient(hierarchical_exact_neg_elbo, params)
    samples = gradient_samples(TraceGO_ELBO(), hierarchical_model, hierarchical_guide, params, 4000)
    assert_unbiased(samples, exact)
