"""Discrete guide sites with guide children, discrete or continuous, at any depth: the
score-function fallback (Rao-Blackwellised by provenance) is unbiased, and the
continuous children keep their pathwise gradient."""

import itertools
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from conftest import assert_unbiased, exact_gradient, gradient_samples
from shared_cases import AIR, CHAIN, M2, SUBSAMPLED_CHAIN

from pyro_go import TraceGO_ELBO


def expected_normal_log_density(obs, mean, variance):
    """``E log N(obs; m, 1)`` for ``m`` with the given mean and variance."""
    return -0.5 * math.log(2 * math.pi) - 0.5 * ((obs - mean) ** 2 + variance)


#: eight particles per gradient sample, vectorised: one estimate costs less than two
PARTICLES = {"num_particles": 8, "vectorize_particles": True}


def samples_after_warning(elbo, model, guide, params, num_samples, once=True):
    """Gradient samples after the fallback warning (given once per site: with
    ``once``, every site warns on the first step)."""
    with pytest.warns(UserWarning, match="has children in the guide"):
        elbo.differentiable_loss(model, guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error" if once else "ignore")
        return gradient_samples(elbo, model, guide, params, num_samples)


# ------------------------------------------------- M2: Categorical y -> Normal z | y


def m2_model():
    y = pyro.sample("y", dist.OneHotCategorical(torch.ones(3) / 3))
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    mean = y @ torch.tensor(M2["weights"]) + z
    pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=torch.tensor(M2["obs"]))


def m2_guide():
    logits = pyro.param("logits", torch.tensor(M2["logits"]))
    locs = pyro.param("locs", torch.tensor(M2["locs"]))
    log_scale = pyro.param("log_scale", torch.tensor(M2["log_scale"]))
    y = pyro.sample("y", dist.OneHotCategorical(logits=logits))
    pyro.sample(
        "z", dist.Normal(torch.nn.functional.linear(y, locs.t()), log_scale.exp()).to_event(1)
    )


def m2_exact_neg_elbo():
    logits, locs, log_scale = (pyro.param(n).double() for n in ("logits", "locs", "log_scale"))
    weights, obs = torch.tensor(M2["weights"]).double(), torch.tensor(M2["obs"]).double()
    log_q_y = logits.log_softmax(-1)
    variance = (2 * log_scale).exp()
    total = 0.0
    for k in range(3):
        kl = 0.5 * (variance + locs[k] ** 2 - 1 - 2 * log_scale).sum()
        likelihood = expected_normal_log_density(obs, weights[k] + locs[k], variance).sum()
        term = math.log(1 / 3) - log_q_y[k] - kl + likelihood
        total = total + log_q_y[k].exp() * term
    return -total


def test_m2_categorical_with_continuous_child():
    m2_guide()
    params = [pyro.param(n).unconstrained() for n in ("logits", "locs", "log_scale")]
    exact = exact_gradient(m2_exact_neg_elbo(), params)
    samples = samples_after_warning(TraceGO_ELBO(**PARTICLES), m2_model, m2_guide, params, 200)
    assert_unbiased(samples, exact)


def test_strict_names_the_continuous_child():
    with pytest.raises(ValueError, match=r"'y' has children in the guide \(z\)"):
        TraceGO_ELBO(strict=True).differentiable_loss(m2_model, m2_guide)


# ------------------------------------------ Bernoulli -> Normal -> Bernoulli chain


def chain_model():
    y = pyro.sample("y", dist.Bernoulli(0.5))
    z = pyro.sample("z", dist.Normal(y, 1.0))
    w = pyro.sample("w", dist.Bernoulli(logits=z))
    pyro.sample("x", dist.Normal(y + 2 * w + z / 2, 1.0), obs=torch.tensor(CHAIN["obs"]))


def chain_guide():
    a, b0, b1, s, c = (pyro.param(n, torch.tensor(CHAIN[n])) for n in ("a", "b0", "b1", "s", "c"))
    y = pyro.sample("y", dist.Bernoulli(logits=a))
    z = pyro.sample("z", dist.Normal(b0 + b1 * y, s.exp()))
    pyro.sample("w", dist.Bernoulli(logits=c * z))


def chain_exact_neg_elbo(num_nodes=80):
    """Enumeration over ``y`` and ``w``, Gauss-Hermite quadrature over ``z``."""
    a, b0, b1, s, c = (pyro.param(n).double() for n in ("a", "b0", "b1", "s", "c"))
    nodes, weights = (torch.tensor(v) for v in np.polynomial.hermite.hermgauss(num_nodes))
    total = 0.0
    for y in (0.0, 1.0):
        log_q_y = dist.Bernoulli(logits=a).log_prob(torch.tensor(y).double())
        loc, scale = b0 + b1 * y, s.exp()
        z = loc + math.sqrt(2) * scale * nodes
        inner = math.log(0.5) - log_q_y
        inner = inner + dist.Normal(y, 1.0).log_prob(z) - dist.Normal(loc, scale).log_prob(z)
        for w in (0.0, 1.0):
            w_ = torch.tensor(w).double()
            log_q_w = dist.Bernoulli(logits=c * z).log_prob(w_)
            log_p = dist.Bernoulli(logits=z).log_prob(w_)
            log_p = log_p + dist.Normal(y + 2 * w + z / 2, 1.0).log_prob(torch.tensor(CHAIN["obs"]))
            integrand = log_q_w.exp() * (inner + log_p - log_q_w)
            total = total + log_q_y.exp() * (weights * integrand).sum() / math.sqrt(math.pi)
    return -total


def test_bernoulli_normal_bernoulli_chain():
    chain_guide()
    params = [pyro.param(n).unconstrained() for n in ("a", "b0", "b1", "s", "c")]
    exact = exact_gradient(chain_exact_neg_elbo(), params)
    elbo = TraceGO_ELBO(**PARTICLES)
    samples = samples_after_warning(elbo, chain_model, chain_guide, params, 200)
    assert_unbiased(samples, exact)


# ------------------------------------------- AIR-like: z_pres with continuous children

STEPS = 3


def air_model(stop_in_python):
    def model():
        present = torch.tensor(1.0)
        total = 0.0
        for t in range(STEPS):
            present = pyro.sample(f"present_{t}", dist.Bernoulli(0.5 * present))
            if stop_in_python and not present:
                break
            with poutine.mask(mask=present.bool()):
                where = pyro.sample(f"where_{t}", dist.Normal(0.0, 1.0))
                what = pyro.sample(f"what_{t}", dist.Normal(0.0, 1.0))
            total = total + present * (where + what)
        pyro.sample("x", dist.Normal(total, 1.0), obs=torch.tensor(AIR["obs"]))

    return model


def air_guide(stop_in_python):
    def guide():
        logits = pyro.param("logits", torch.tensor(AIR["logits"]))
        where_loc = pyro.param("where", torch.tensor(AIR["where"]))
        what_loc = pyro.param("what", torch.tensor(AIR["what"]))
        scale = pyro.param("log_scale", torch.tensor(AIR["log_scale"])).exp()
        present = torch.tensor(1.0)
        for t in range(STEPS):
            probs = torch.sigmoid(logits[t]) * present
            present = pyro.sample(f"present_{t}", dist.Bernoulli(probs))
            if stop_in_python and not present:
                break
            with poutine.mask(mask=present.bool()):
                pyro.sample(f"where_{t}", dist.Normal(where_loc[t], scale))
                pyro.sample(f"what_{t}", dist.Normal(what_loc[t], scale))

    return guide


AIR_PARAMS = ("logits", "where", "what", "log_scale")


def air_exact_neg_elbo():
    """Sum over the number of objects ``k`` (the first ``k`` present), closed-form
    Gaussian expectations given ``k``."""
    logits, where, what, log_scale = (pyro.param(n).double() for n in AIR_PARAMS)
    variance = (2 * log_scale).exp()
    log_present, log_absent = (
        torch.nn.functional.logsigmoid(logits),
        torch.nn.functional.logsigmoid(-logits),
    )
    total = 0.0
    for k in range(STEPS + 1):
        log_q = log_present[:k].sum() + (log_absent[k] if k < STEPS else 0.0)
        log_p = math.log(0.5) * min(k + 1, STEPS)
        kl = 0.5 * (2 * variance + where[:k] ** 2 + what[:k] ** 2 - 2 - 4 * log_scale).sum()
        mean = (where[:k] + what[:k]).sum()
        likelihood = expected_normal_log_density(AIR["obs"], mean, 2 * k * variance)
        total = total + log_q.exp() * (log_p - log_q - kl + likelihood)
    return -total


@pytest.mark.parametrize("stop_in_python", [False, True], ids=["masked", "python-break"])
def test_air_like_chain(stop_in_python):
    model, guide = air_model(stop_in_python), air_guide(stop_in_python)
    guide()
    params = [pyro.param(n).unconstrained() for n in AIR_PARAMS]
    exact = exact_gradient(air_exact_neg_elbo(), params)
    if stop_in_python:  # reads a value per particle: particles cannot be vectorised
        elbo, num_samples = TraceGO_ELBO(), 800
    else:
        elbo, num_samples = TraceGO_ELBO(**PARTICLES), 200
    samples = samples_after_warning(elbo, model, guide, params, num_samples, not stop_in_python)
    assert_unbiased(samples, exact)


def test_every_discrete_site_with_children_uses_the_fallback():
    """A chain of three ``present`` sites each with continuous children: all three are
    internal, none is perturbed, and the continuous sites are never taken for leaves."""
    elbo = TraceGO_ELBO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo.differentiable_loss(air_model(False), air_guide(False)).backward()
    named = {str(w.message).split("'")[1] for w in caught}
    assert named == {f"present_{t}" for t in range(STEPS)}
    assert elbo.last_num_evaluations == 0


# ------------------------------- a subsampled plate scales the fallback's costs once


def subsampled_chain_model(subsample_size):
    case = SUBSAMPLED_CHAIN
    data = torch.tensor(case["data"])
    with pyro.plate("data", len(data), subsample_size=subsample_size) as index:
        z = pyro.sample("z", dist.Bernoulli(case["prior"]))
        z2 = pyro.sample("z2", dist.Bernoulli(0.3 + 0.4 * z))
        pyro.sample("x", dist.Normal(z + 2 * z2, 1.0), obs=data[index])


def subsampled_chain_guide(subsample_size):
    case = SUBSAMPLED_CHAIN
    logits = pyro.param("logits", torch.tensor(case["logits"]))
    child_logits = torch.tensor(case["child_logits"])
    with pyro.plate("data", len(case["data"]), subsample_size=subsample_size) as index:
        z = pyro.sample("z", dist.Bernoulli(logits=logits[index]))
        pyro.sample("z2", dist.Bernoulli(logits=child_logits[z.long()]))


def subsampled_chain_exact_neg_elbo():
    """The full-plate negative ELBO, by enumerating each point's (z, z2)."""
    case = SUBSAMPLED_CHAIN
    logits = pyro.param("logits")
    total = 0.0
    for n, obs in enumerate(case["data"]):
        for a, b in itertools.product([0.0, 1.0], repeat=2):
            z, z2 = torch.tensor(a), torch.tensor(b)
            log_q = dist.Bernoulli(logits=logits[n]).log_prob(z) + dist.Bernoulli(
                logits=torch.tensor(case["child_logits"][int(a)])
            ).log_prob(z2)
            log_p = (
                dist.Bernoulli(case["prior"]).log_prob(z)
                + dist.Bernoulli(0.3 + 0.4 * z).log_prob(z2)
                + dist.Normal(z + 2 * z2, 1.0).log_prob(torch.tensor(obs))
            )
            total = total + log_q.exp() * (log_p - log_q)
    return -total


def test_subsampled_plate_scales_the_score_function_once():
    """Regression: the score term multiplied a scaled ``log q`` by costs that carry the
    plate's scale already, so a subsample of half doubled the gradient."""
    subsampled_chain_guide(None)
    params = [pyro.param("logits").unconstrained()]
    exact = exact_gradient(subsampled_chain_exact_neg_elbo(), params)
    size = SUBSAMPLED_CHAIN["subsample_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        samples = gradient_samples(
            TraceGO_ELBO(), subsampled_chain_model, subsampled_chain_guide, params, 3000, size
        )
    assert_unbiased(samples, exact)
