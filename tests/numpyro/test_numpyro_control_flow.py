"""Python control flow on latent values in NumPyro: JAX cannot trace a latent value
read as Python data, so TraceGO_ELBO raises an error that names the site and the way
out (eager and jitted); the rewrite the error suggests is unbiased (the twin of
``tests/pyro/test_control_flow.py``)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax_helpers import exact_gradient, gradient_samples
from shared_cases import BRANCH, COUNT_SITES
from unbiasedness import assert_unbiased

from numpyro_go import TraceGO_ELBO

ONES = jnp.ones(3)
BRANCH_OBS = jnp.array(BRANCH["obs"])


def branch_model():
    z = numpyro.sample("z", dist.Bernoulli(0.5 * ONES).to_event(1))
    loc = 2.0 if z[..., 0].all() else -1.0
    numpyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=BRANCH_OBS)


def branch_model_where():
    """``branch_model`` with the branch written with ``jnp.where``."""
    z = numpyro.sample("z", dist.Bernoulli(0.5 * ONES).to_event(1))
    loc = jnp.where(z[..., :1] > 0, 2.0, -1.0)
    numpyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1), obs=BRANCH_OBS)


BRANCH_PARAMS = {"logits": jnp.array(BRANCH["logits"])}


def branch_guide():
    logits = numpyro.param("logits", BRANCH_PARAMS["logits"])
    numpyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))


def branch_exact_neg_elbo(params):
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        z = jnp.array(bits)
        log_q = jnp.sum(dist.Bernoulli(logits=params["logits"]).log_prob(z))
        loc = 2.0 if bits[0] else -1.0
        log_p = 3 * math.log(0.5) + jnp.sum(dist.Normal(loc + z, 1.0).log_prob(BRANCH_OBS))
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return -total


def count_model():
    n = numpyro.sample("n", dist.Poisson(COUNT_SITES["prior_rate"]))
    total = 0.0
    for i in range(int(n)):
        total = total + numpyro.sample(f"z_{i}", dist.Bernoulli(0.3))
    numpyro.sample("x", dist.Normal(total, 1.0), obs=COUNT_SITES["obs"])


COUNT_PARAMS = {name: jnp.array(COUNT_SITES[name]) for name in ("rate", "l0", "l1")}


def count_guide():
    rate = numpyro.param("rate", COUNT_PARAMS["rate"], constraint=dist.constraints.positive)
    l0, l1 = numpyro.param("l0", COUNT_PARAMS["l0"]), numpyro.param("l1", COUNT_PARAMS["l1"])
    n = numpyro.sample("n", dist.Poisson(rate))
    for i in range(int(n)):
        numpyro.sample(f"z_{i}", dist.Bernoulli(logits=l0 + l1 * i))


def gradient(model, guide, params, jit):
    def grad(p):
        return jax.grad(lambda q: TraceGO_ELBO().loss(jax.random.PRNGKey(1), q, model, guide))(p)

    return (jax.jit(grad) if jit else grad)(params)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "case, site",
    [("branch", "'z'"), ("count", "'n'")],
)
def test_read_of_a_latent_value_names_the_site(case, site, jit):
    model, guide, params = {
        "branch": (branch_model, branch_guide, BRANCH_PARAMS),
        "count": (count_model, count_guide, COUNT_PARAMS),
    }[case]
    with pytest.raises(ValueError, match=f"site.* {site}.*as Python data.*jnp.where.*mask"):
        gradient(model, guide, params, jit)


def test_branch_written_with_where_is_unbiased():
    samples = gradient_samples(
        TraceGO_ELBO(), branch_model_where, branch_guide, BRANCH_PARAMS, 1000
    )
    assert_unbiased(samples, exact_gradient(branch_exact_neg_elbo, BRANCH_PARAMS))
