"""Discrete guide sites with continuous guide children in NumPyro: the score-function
fallback is unbiased (the twin of ``tests/pyro/test_internal_sites.py``)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax_helpers import exact_gradient, gradient_samples
from numpyro import handlers
from shared_cases import AIR, CHAIN, M2, SUBSAMPLED_CHAIN
from unbiasedness import assert_unbiased

from numpyro_go import TraceGO_ELBO


def expected_normal_log_density(obs, mean, variance):
    """``E log N(obs; m, 1)`` for ``m`` with the given mean and variance."""
    return -0.5 * math.log(2 * math.pi) - 0.5 * ((obs - mean) ** 2 + variance)


def fallback_samples(model, guide, params, num_samples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning, checked below
        return gradient_samples(TraceGO_ELBO(), model, guide, params, num_samples)


# ------------------------------------------------- M2: Categorical y -> Normal z | y


def m2_model():
    y = numpyro.sample("y", dist.Categorical(jnp.ones(3) / 3))
    z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    mean = jnp.array(M2["weights"])[y] + z
    numpyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=jnp.array(M2["obs"]))


def m2_guide():
    logits = numpyro.param("logits", jnp.array(M2["logits"]))
    locs = numpyro.param("locs", jnp.array(M2["locs"]))
    log_scale = numpyro.param("log_scale", jnp.array(M2["log_scale"]))
    y = numpyro.sample("y", dist.Categorical(logits=logits))
    numpyro.sample("z", dist.Normal(locs[y], jnp.exp(log_scale)).to_event(1))


M2_PARAMS = {name: jnp.array(M2[name]) for name in ("logits", "locs", "log_scale")}


def m2_exact_neg_elbo(params):
    logits, locs, log_scale = params["logits"], params["locs"], params["log_scale"]
    weights, obs = jnp.array(M2["weights"]), jnp.array(M2["obs"])
    log_q_y = jax.nn.log_softmax(logits)
    variance = jnp.exp(2 * log_scale)
    total = 0.0
    for k in range(3):
        kl = 0.5 * jnp.sum(variance + locs[k] ** 2 - 1 - 2 * log_scale)
        likelihood = jnp.sum(expected_normal_log_density(obs, weights[k] + locs[k], variance))
        total = total + jnp.exp(log_q_y[k]) * (math.log(1 / 3) - log_q_y[k] - kl + likelihood)
    return -total


def test_m2_categorical_with_continuous_child():
    with pytest.warns(UserWarning, match=r"'y' has children in the guide \(z\)"):
        TraceGO_ELBO().loss(jax.random.PRNGKey(0), M2_PARAMS, m2_model, m2_guide)
    samples = fallback_samples(m2_model, m2_guide, M2_PARAMS, 1000)
    assert_unbiased(samples, exact_gradient(m2_exact_neg_elbo, M2_PARAMS))


# ------------------------------------------ Bernoulli -> Normal -> Bernoulli chain


def chain_model():
    y = numpyro.sample("y", dist.Bernoulli(0.5))
    z = numpyro.sample("z", dist.Normal(y, 1.0))
    w = numpyro.sample("w", dist.Bernoulli(logits=z))
    numpyro.sample("x", dist.Normal(y + 2 * w + z / 2, 1.0), obs=CHAIN["obs"])


CHAIN_NAMES = ("a", "b0", "b1", "s", "c")
CHAIN_PARAMS = {name: jnp.array(CHAIN[name]) for name in CHAIN_NAMES}


def chain_guide():
    a, b0, b1, s, c = (numpyro.param(n, CHAIN_PARAMS[n]) for n in CHAIN_NAMES)
    y = numpyro.sample("y", dist.Bernoulli(logits=a))
    z = numpyro.sample("z", dist.Normal(b0 + b1 * y, jnp.exp(s)))
    numpyro.sample("w", dist.Bernoulli(logits=c * z))


def chain_exact_neg_elbo(params, num_nodes=80):
    """Enumeration over ``y`` and ``w``, Gauss-Hermite quadrature over ``z``."""
    a, b0, b1, s, c = (params[n] for n in CHAIN_NAMES)
    nodes, weights = (jnp.asarray(v) for v in np.polynomial.hermite.hermgauss(num_nodes))
    total = 0.0
    for y in (0.0, 1.0):
        log_q_y = dist.Bernoulli(logits=a).log_prob(y)
        loc, scale = b0 + b1 * y, jnp.exp(s)
        z = loc + math.sqrt(2) * scale * nodes
        inner = math.log(0.5) - log_q_y
        inner = inner + dist.Normal(y, 1.0).log_prob(z) - dist.Normal(loc, scale).log_prob(z)
        for w in (0.0, 1.0):
            log_q_w = dist.Bernoulli(logits=c * z).log_prob(w)
            log_p = dist.Bernoulli(logits=z).log_prob(w)
            log_p = log_p + dist.Normal(y + 2 * w + z / 2, 1.0).log_prob(CHAIN["obs"])
            integrand = jnp.exp(log_q_w) * (inner + log_p - log_q_w)
            total = total + jnp.exp(log_q_y) * jnp.sum(weights * integrand) / math.sqrt(math.pi)
    return -total


def test_bernoulli_normal_bernoulli_chain():
    samples = fallback_samples(chain_model, chain_guide, CHAIN_PARAMS, 1000)
    assert_unbiased(samples, exact_gradient(chain_exact_neg_elbo, CHAIN_PARAMS))


# ------------------------------------------- AIR-like: z_pres with continuous children

STEPS = 3


def air_model():
    present = jnp.array(1.0)
    total = 0.0
    for t in range(STEPS):
        # sampled after a stop too, but masked out (Bernoulli(probs=0) would give NaN
        # gradients)
        with handlers.mask(mask=present.astype(bool)):
            present = present * numpyro.sample(f"present_{t}", dist.Bernoulli(0.5))
        with handlers.mask(mask=present.astype(bool)):
            where = numpyro.sample(f"where_{t}", dist.Normal(0.0, 1.0))
            what = numpyro.sample(f"what_{t}", dist.Normal(0.0, 1.0))
        total = total + present * (where + what)
    numpyro.sample("x", dist.Normal(total, 1.0), obs=AIR["obs"])


AIR_NAMES = ("logits", "where", "what", "log_scale")
AIR_PARAMS = {name: jnp.array(AIR[name]) for name in AIR_NAMES}


def air_guide():
    logits, where, what, log_scale = (numpyro.param(n, AIR_PARAMS[n]) for n in AIR_NAMES)
    present = jnp.array(1.0)
    for t in range(STEPS):
        with handlers.mask(mask=present.astype(bool)):
            present = present * numpyro.sample(f"present_{t}", dist.Bernoulli(logits=logits[t]))
        with handlers.mask(mask=present.astype(bool)):
            numpyro.sample(f"where_{t}", dist.Normal(where[t], jnp.exp(log_scale)))
            numpyro.sample(f"what_{t}", dist.Normal(what[t], jnp.exp(log_scale)))


def air_exact_neg_elbo(params):
    """Sum over the number of objects ``k`` (the first ``k`` present), closed-form
    Gaussian expectations given ``k``."""
    logits, where, what, log_scale = (params[n] for n in AIR_NAMES)
    variance = jnp.exp(2 * log_scale)
    log_present, log_absent = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    total = 0.0
    for k in range(STEPS + 1):
        log_q = jnp.sum(log_present[:k]) + (log_absent[k] if k < STEPS else 0.0)
        log_p = math.log(0.5) * min(k + 1, STEPS)
        kl = 0.5 * jnp.sum(2 * variance + where[:k] ** 2 + what[:k] ** 2 - 2 - 4 * log_scale)
        mean = jnp.sum(where[:k] + what[:k])
        likelihood = expected_normal_log_density(AIR["obs"], mean, 2 * k * variance)
        total = total + jnp.exp(log_q) * (log_p - log_q - kl + likelihood)
    return -total


def test_air_like_chain():
    samples = fallback_samples(air_model, air_guide, AIR_PARAMS, 1500)
    assert_unbiased(samples, exact_gradient(air_exact_neg_elbo, AIR_PARAMS))


# ------------------------------- a subsampled plate scales the fallback's costs once


def subsampled_chain_model(subsample_size):
    case = SUBSAMPLED_CHAIN
    data = jnp.array(case["data"])
    with numpyro.plate("data", len(data), subsample_size=subsample_size) as index:
        z = numpyro.sample("z", dist.Bernoulli(case["prior"]))
        z2 = numpyro.sample("z2", dist.Bernoulli(0.3 + 0.4 * z))
        numpyro.sample("x", dist.Normal(z + 2 * z2, 1.0), obs=data[index])


def subsampled_chain_guide(subsample_size):
    case = SUBSAMPLED_CHAIN
    logits = numpyro.param("logits", jnp.array(case["logits"]))
    child_logits = jnp.array(case["child_logits"])
    with numpyro.plate("data", len(case["data"]), subsample_size=subsample_size) as index:
        z = numpyro.sample("z", dist.Bernoulli(logits=logits[index]))
        numpyro.sample("z2", dist.Bernoulli(logits=child_logits[z]))


def subsampled_chain_exact_neg_elbo(params):
    """The full-plate negative ELBO, by enumerating each point's (z, z2)."""
    case = SUBSAMPLED_CHAIN
    total = 0.0
    for a in (0, 1):
        for b in (0, 1):
            log_q = dist.Bernoulli(logits=params["logits"]).log_prob(a) + dist.Bernoulli(
                logits=case["child_logits"][a]
            ).log_prob(b)
            log_p = (
                dist.Bernoulli(case["prior"]).log_prob(a)
                + dist.Bernoulli(0.3 + 0.4 * a).log_prob(b)
                + dist.Normal(a + 2.0 * b, 1.0).log_prob(jnp.array(case["data"]))
            )
            total = total + jnp.sum(jnp.exp(log_q) * (log_p - log_q))
    return -total


def test_subsampled_plate_scales_the_score_function_once():
    """Regression: the score term multiplied a scaled ``log q`` by costs that carry the
    plate's scale already, so a subsample of half doubled the gradient."""
    params = {"logits": jnp.array(SUBSAMPLED_CHAIN["logits"])}
    size = SUBSAMPLED_CHAIN["subsample_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning
        samples = gradient_samples(
            TraceGO_ELBO(), subsampled_chain_model, subsampled_chain_guide, params, 3000, size
        )
    assert_unbiased(samples, exact_gradient(subsampled_chain_exact_neg_elbo, params))
