"""The conjugate models of Pyro's ``tests/infer/test_inference.py`` (Poisson–Gamma,
Exponential–Gamma, Beta–Bernoulli) with the non-reparameterised guides of
``pyro.distributions.testing.fakes``, trained with ``TraceGO_ELBO``: the guide must reach
the analytic posterior within the tolerances that file uses.

The ``slow`` versions use that file's optimiser settings and step counts; the default
versions take fewer steps with a larger, decaying learning rate."""

import math

import pyro
import pyro.distributions as dist
import pyro.optim as optim
import pytest
import torch
from pyro.distributions import constraints
from pyro.distributions.testing import fakes
from pyro.infer import SVI

from pyro_go import TraceGO_ELBO

#: (steps, optimiser) for the short default runs
SHORT = {"steps": 1500, "optim": lambda: optim.ClippedAdam({"lr": 0.02, "lrd": 0.998})}


def fit(model, guide, steps, optimiser):
    svi = SVI(model, guide, optimiser, TraceGO_ELBO())
    for _ in range(steps):
        svi.step()


def settings(steps, lr):
    """The short default run and, marked slow, the original run."""
    original = {"steps": steps, "optim": lambda: optim.Adam({"lr": lr, "betas": (0.97, 0.999)})}
    return pytest.mark.parametrize(
        "run", [SHORT, pytest.param(original, marks=pytest.mark.slow)], ids=["short", "original"]
    )


@settings(25000, 0.0002)
def test_poisson_gamma(run):
    alpha0, beta0 = torch.tensor(1.0), torch.tensor(1.0)
    data = torch.tensor([1.0, 2.0, 3.0])
    alpha_n, beta_n = alpha0 + data.sum(), beta0 + len(data)

    def model():
        lam = pyro.sample("lambda_latent", fakes.NonreparameterizedGamma(alpha0, beta0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Poisson(lam), obs=data)

    def guide():
        alpha_q = pyro.param("alpha_q", alpha_n + math.exp(0.17), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", beta_n / math.exp(0.143), constraint=constraints.positive)
        pyro.sample("lambda_latent", fakes.NonreparameterizedGamma(alpha_q, beta_q))

    fit(model, guide, run["steps"], run["optim"]())
    assert abs(pyro.param("alpha_q").item() - alpha_n.item()) < 0.2
    assert abs(pyro.param("beta_q").item() - beta_n.item()) < 0.15


@settings(10000, 0.0003)
def test_exponential_gamma(run):
    alpha0, beta0 = torch.tensor(1.0), torch.tensor(1.0)
    data = torch.tensor([3.0, 2.0])
    alpha_n, beta_n = alpha0 + len(data), beta0 + data.sum()

    def model():
        lam = pyro.sample("lambda_latent", fakes.NonreparameterizedGamma(alpha0, beta0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Exponential(lam), obs=data)

    def guide():
        alpha_q = pyro.param("alpha_q", alpha_n * math.exp(0.17), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", beta_n / math.exp(0.143), constraint=constraints.positive)
        pyro.sample("lambda_latent", fakes.NonreparameterizedGamma(alpha_q, beta_q))

    fit(model, guide, run["steps"], run["optim"]())
    # test_inference.py's tolerance for a guide without rsample
    assert abs(pyro.param("alpha_q").item() - alpha_n.item()) < 0.25
    assert abs(pyro.param("beta_q").item() - beta_n.item()) < 0.25


@settings(10000, 0.001)
def test_beta_bernoulli(run):
    alpha0, beta0 = torch.tensor(1.0), torch.tensor(1.0)
    data = torch.tensor([0.0, 1.0, 1.0, 1.0])
    alpha_n, beta_n = alpha0 + data.sum(), beta0 + len(data) - data.sum()

    def model():
        p = pyro.sample("p_latent", fakes.NonreparameterizedBeta(alpha0, beta0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide():
        alpha_q_log = pyro.param("alpha_q_log", alpha_n.log() + 0.17)
        beta_q_log = pyro.param("beta_q_log", beta_n.log() - 0.143)
        q = fakes.NonreparameterizedBeta(alpha_q_log.exp(), beta_q_log.exp())
        pyro.sample("p_latent", q)

    fit(model, guide, run["steps"], run["optim"]())
    assert abs(pyro.param("alpha_q_log").item() - alpha_n.log().item()) < 0.08
    assert abs(pyro.param("beta_q_log").item() - beta_n.log().item()) < 0.08
