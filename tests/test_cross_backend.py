"""For the same latent values, the Pyro and NumPyro estimators return the same gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as pdist
import pytest
import torch
from shared_cases import BERNOULLI, COUNT, CROSS_BACKEND

import numpyro_go
import pyro_go

# ------------------------------------------------------- distributions with a fixed sample


class FixedBernoulliTorch(pdist.Bernoulli):
    def sample(self, sample_shape=()):
        return torch.tensor(CROSS_BACKEND["bernoulli_sample"]).expand(self.shape(sample_shape))


class FixedBernoulliJax(ndist.BernoulliLogits):
    def sample(self, key, sample_shape=()):
        return jnp.broadcast_to(jnp.array(CROSS_BACKEND["bernoulli_sample"]), self.shape())


class FixedNegativeBinomialTorch(pdist.NegativeBinomial):
    def sample(self, sample_shape=()):
        return torch.full(self.shape(sample_shape), CROSS_BACKEND["count_sample"])


class FixedNegativeBinomialJax(ndist.NegativeBinomialProbs):
    def sample(self, key, sample_shape=()):
        return jnp.full(self.shape(), CROSS_BACKEND["count_sample"])


# ------------------------------------------------------------------------- problems


def bernoulli_pyro():
    weights = torch.tensor(BERNOULLI["weights"])

    def model():
        prior_logits = pyro.param("prior_logits", torch.tensor(BERNOULLI["prior_logits"]))
        z = pyro.sample("z", pdist.Bernoulli(logits=prior_logits).to_event(1))
        mean = torch.tanh((z * weights).sum(-1))
        pyro.sample("x", pdist.Normal(mean, BERNOULLI["scale"]), obs=torch.tensor(BERNOULLI["obs"]))

    def guide():
        logits = pyro.param("logits", torch.tensor(BERNOULLI["logits"]))
        pyro.sample("z", FixedBernoulliTorch(logits=logits).to_event(1))

    return model, guide


def bernoulli_numpyro():
    weights = jnp.array(BERNOULLI["weights"])

    def model():
        prior_logits = numpyro.param("prior_logits", jnp.array(BERNOULLI["prior_logits"]))
        z = numpyro.sample("z", ndist.Bernoulli(logits=prior_logits).to_event(1))
        mean = jnp.tanh(jnp.sum(z * weights, -1))
        numpyro.sample("x", ndist.Normal(mean, BERNOULLI["scale"]), obs=BERNOULLI["obs"])

    def guide():
        logits = numpyro.param("logits", jnp.array(BERNOULLI["logits"]))
        numpyro.sample("z", FixedBernoulliJax(logits).to_event(1))

    params = {k: jnp.array(BERNOULLI[k]) for k in ("logits", "prior_logits")}
    return model, guide, params


NB = COUNT["negative-binomial-10"]


def negative_binomial_pyro():
    def model():
        pyro.sample("z", pdist.NegativeBinomial(NB["model"]["total_count"], NB["model"]["probs"]))

    def guide():
        r = pyro.param("total_count", torch.tensor(NB["guide"]["total_count"]))
        p = pyro.param("probs", torch.tensor(NB["guide"]["probs"]))
        pyro.sample("z", FixedNegativeBinomialTorch(r, probs=p))

    return model, guide


def negative_binomial_numpyro():
    def model():
        numpyro.sample(
            "z", ndist.NegativeBinomialProbs(NB["model"]["total_count"], NB["model"]["probs"])
        )

    def guide():
        r = numpyro.param("total_count", NB["guide"]["total_count"])
        p = numpyro.param("probs", NB["guide"]["probs"])
        numpyro.sample("z", FixedNegativeBinomialJax(r, p))

    params = {k: jnp.array(v) for k, v in NB["guide"].items()}
    return model, guide, params


@pytest.mark.parametrize(
    "pyro_problem, numpyro_problem",
    [(bernoulli_pyro, bernoulli_numpyro), (negative_binomial_pyro, negative_binomial_numpyro)],
    ids=["bernoulli-vector", "negative-binomial"],
)
def test_same_sample_same_gradient(pyro_problem, numpyro_problem):
    pyro.clear_param_store()
    model, guide, params = numpyro_problem()
    names = sorted(params)
    grads = jax.grad(
        lambda p: numpyro_go.TraceGO_ELBO().loss(jax.random.PRNGKey(0), p, model, guide)
    )(params)
    jax_gradient = np.concatenate([np.ravel(grads[n]) for n in names])

    model, guide = pyro_problem()
    loss = pyro_go.TraceGO_ELBO().differentiable_loss(model, guide)
    torch_params = [pyro.param(n).unconstrained() for n in names]
    torch_grads = torch.autograd.grad(loss, torch_params)
    torch_gradient = np.concatenate([g.reshape(-1).numpy() for g in torch_grads])
    pyro.clear_param_store()
    assert np.abs(torch_gradient).min() > 1e-3  # every coordinate takes part
    np.testing.assert_allclose(jax_gradient, torch_gradient, rtol=2e-5, atol=1e-6)
