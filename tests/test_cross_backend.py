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


# ----------------------------------------------------- RELAX: same noise, same numbers

RELAX_NOISE = {"u": [0.3, 0.8, 0.55, 0.1], "v": [0.6, 0.1, 0.9, 0.45]}


def relax_control_variates(backend):
    return {
        "rebar": backend.REBAR(eta=0.8, temperature=0.6),
        "relaxed-rebar": backend.RELAX(rebar=True, eta=0.8, temperature=0.6),
        "baseline": backend.Baseline(),
    }


@pytest.mark.parametrize("variant", ["rebar", "relaxed-rebar", "baseline"])
def test_relax_same_noise_same_gradients(variant):
    """The logits gradient and the control variate's variance gradient agree between
    backends for fixed noise ``(u, v)`` and equal control-variate parameters (the RELAX
    network's weights copied from the Pyro module into NumPyro's stax params)."""
    noise = tuple(RELAX_NOISE[k] for k in "uv")
    weights = torch.tensor(BERNOULLI["weights"])

    def pyro_model():
        prior_logits = pyro.param("prior_logits", torch.tensor(BERNOULLI["prior_logits"]))
        z = pyro.sample("z", pdist.Bernoulli(logits=prior_logits).to_event(1))
        mean = torch.tanh((z * weights).sum(-1))
        pyro.sample("x", pdist.Normal(mean, BERNOULLI["scale"]), obs=torch.tensor(BERNOULLI["obs"]))

    def pyro_guide():
        logits = pyro.param("logits", torch.tensor(BERNOULLI["logits"]))
        noise_t = tuple(torch.tensor(x) for x in noise)
        pyro.sample("z", pdist.Bernoulli(logits=logits).to_event(1), infer={"relax_noise": noise_t})

    pyro.clear_param_store()
    torch.manual_seed(0)
    elbo = pyro_go.TraceRELAX_ELBO(relax_control_variates(pyro_go)[variant])
    loss = elbo.differentiable_loss(pyro_model, pyro_guide)
    store = pyro.get_param_store()
    names = sorted(store.keys())
    torch_params = [store[name].unconstrained() for name in names]
    torch_grads = dict(zip(names, torch.autograd.grad(loss, torch_params), strict=True))
    torch_values = {name: store[name].detach().numpy() for name in names}
    pyro_variance = elbo.last_variance["z"]
    pyro.clear_param_store()

    def numpyro_model():
        prior_logits = numpyro.param("prior_logits", jnp.array(BERNOULLI["prior_logits"]))
        z = numpyro.sample("z", ndist.Bernoulli(logits=prior_logits).to_event(1))
        mean = jnp.tanh(jnp.sum(z * jnp.array(BERNOULLI["weights"]), -1))
        numpyro.sample("x", ndist.Normal(mean, BERNOULLI["scale"]), obs=BERNOULLI["obs"])

    def numpyro_guide():
        logits = numpyro.param("logits", jnp.array(BERNOULLI["logits"]))
        noise_j = tuple(jnp.array(x) for x in noise)
        numpyro.sample(
            "z", ndist.Bernoulli(logits=logits).to_event(1), infer={"relax_noise": noise_j}
        )

    jax_elbo = numpyro_go.TraceRELAX_ELBO(relax_control_variates(numpyro_go)[variant])
    guide = jax_elbo.wrap_guide(numpyro_guide)
    svi = numpyro.infer.SVI(numpyro_model, guide, numpyro.optim.Adam(1e-3), jax_elbo)
    params = svi.get_params(svi.init(jax.random.PRNGKey(0)))
    if variant == "relaxed-rebar":  # copy the Pyro network: Linear(D, 10), tanh, Linear(10, 1)
        layers = [name for name in names if name.startswith("z.relax_network$$$")]
        w1, b1, w2, b2 = (torch_values[f"z.relax_network$$$layers.{k}"] for k in
                          ("0.weight", "0.bias", "2.weight", "2.bias"))  # fmt: skip
        assert len(layers) == 4
        params["z.relax_network$params"] = [(w1.T, b1), (), (w2.T, b2)]
    for name in ("z.relax_eta", "z.relax_temperature", "z.relax_baseline"):
        if name in torch_values:
            params[name] = jnp.asarray(torch_values[name])
    jax_grads = jax.grad(lambda p: jax_elbo.loss(jax.random.PRNGKey(0), p, numpyro_model, guide))(
        params
    )
    jax_variance = jax_elbo.gradient_variance(jax.random.PRNGKey(0), params, numpyro_model, guide)[
        "z"
    ]

    np.testing.assert_allclose(jax_variance, pyro_variance, rtol=1e-4)
    for name in ("logits", "prior_logits", "z.relax_eta", "z.relax_baseline"):
        if name in torch_grads:
            grad = np.asarray(jax_grads[name])
            np.testing.assert_allclose(grad, torch_grads[name].numpy(), rtol=1e-4, atol=1e-6)
    if variant == "relaxed-rebar":  # the network's gradient: first layer's weights
        w1_grad = np.asarray(jax_grads["z.relax_network$params"][0][0]).T
        np.testing.assert_allclose(
            w1_grad, torch_grads["z.relax_network$$$layers.0.weight"].numpy(), rtol=1e-4, atol=1e-6
        )
