"""numpyro_go.TraceRLOO_ELBO and TraceDisARM_ELBO: unbiasedness against exact gradients on
the shared problems (estimates jitted and vmapped over keys), shared plate subsamples,
``SVI`` under ``jit``, and clear errors."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax_helpers import exact_gradient, gradient_samples
from numpyro.infer import SVI
from shared_cases import CATEGORICAL, COUNT, HIERARCHICAL, PLATED
from test_numpyro_relax import mixed_exact_neg_elbo, mixed_guide, mixed_model
from test_numpyro_unbiased import (
    BERNOULLI_PARAMS,
    _trained,
    bernoulli_exact_neg_elbo,
    bernoulli_guide,
    bernoulli_model,
    categorical_exact_neg_elbo,
    categorical_guide,
    categorical_model,
    count_distribution,
    hierarchical_exact_neg_elbo,
    hierarchical_guide,
    hierarchical_model,
    plated_exact_neg_elbo,
    plated_guide,
    plated_model,
    truncated_neg_elbo,
)
from unbiasedness import assert_unbiased

from numpyro_go import TraceDisARM_ELBO, TraceRLOO_ELBO

ESTIMATORS = {
    "rloo-2": lambda: TraceRLOO_ELBO(),
    "rloo-3-mapped": lambda: TraceRLOO_ELBO(num_particles=3, vectorize_particles=False),
    "disarm": lambda: TraceDisARM_ELBO(),
    "disarm-mapped": lambda: TraceDisARM_ELBO(vectorize_particles=False),
}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_coupled_bernoulli_vector(estimator):
    exact = exact_gradient(bernoulli_exact_neg_elbo, BERNOULLI_PARAMS)
    samples = gradient_samples(
        ESTIMATORS[estimator](), bernoulli_model, bernoulli_guide, BERNOULLI_PARAMS, 3000
    )
    assert_unbiased(samples, exact)


PLATED_PARAMS = {
    "local_logits": jnp.array(PLATED["logits"]),
    "weights": jnp.array(PLATED["weights"]),
}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("subsample_size", [None, 3])
def test_plated_local_latents(estimator, subsample_size):
    exact = exact_gradient(plated_exact_neg_elbo, PLATED_PARAMS)
    samples = gradient_samples(
        ESTIMATORS[estimator](), plated_model, plated_guide, PLATED_PARAMS, 3000, subsample_size
    )
    assert_unbiased(samples, exact)


@pytest.mark.parametrize("estimator", ["rloo-2", "disarm"])
def test_continuous_and_bernoulli_sites(estimator):
    params = {"b_logits": jnp.array(0.2), "loc": jnp.array(0.3), "scale": jnp.array(0.8)}
    exact = exact_gradient(mixed_exact_neg_elbo, params)
    samples = gradient_samples(ESTIMATORS[estimator](), mixed_model, mixed_guide, params, 3000)
    assert_unbiased(samples, exact)


def test_rloo_categorical():
    params = {"cat_logits": jnp.array(CATEGORICAL["logits"])}
    exact = exact_gradient(categorical_exact_neg_elbo, params)
    samples = gradient_samples(TraceRLOO_ELBO(), categorical_model, categorical_guide, params, 3000)
    assert_unbiased(samples, exact)


@pytest.mark.parametrize(
    "case",
    [
        "poisson",
        pytest.param("binomial", marks=pytest.mark.slow),
        pytest.param("negative-binomial-10", marks=pytest.mark.slow),
    ],
)
def test_rloo_count_site(case):
    spec = COUNT[case]
    family = spec["family"]

    def guide_fn(params):
        return count_distribution(family, dict(spec["guide"], **params))

    def model():
        numpyro.sample("z", count_distribution(family, spec["model"]))

    def guide():
        numpyro.sample("z", guide_fn({n: numpyro.param(n, v) for n, v in _trained(spec).items()}))

    params = _trained(spec)
    top = int(spec["guide"]["total_count"]) + 1 if family == "binomial" else 1500
    exact = exact_gradient(
        lambda p: truncated_neg_elbo(guide_fn(p), count_distribution(family, spec["model"]), top),
        params,
    )
    samples = gradient_samples(TraceRLOO_ELBO(num_particles=4), model, guide, params, 3000)
    assert_unbiased(samples, exact)


@pytest.mark.slow
def test_rloo_continuous_parent_of_count():
    params = {k: jnp.asarray(HIERARCHICAL[k]) for k in "abc"}
    exact = exact_gradient(hierarchical_exact_neg_elbo, params)
    samples = gradient_samples(
        TraceRLOO_ELBO(num_particles=4), hierarchical_model, hierarchical_guide, params, 4000
    )
    assert_unbiased(samples, exact)


# ------------------------------- DisARM with a continuous parent (shared pair noise)


def parent_model():
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    numpyro.sample("x", dist.Normal(w + z, 1.0), obs=0.5)


def parent_guide():
    loc = numpyro.param("loc", 0.2)
    w = numpyro.sample("w", dist.Normal(loc, 1.0))
    numpyro.sample("z", dist.Bernoulli(logits=w + numpyro.param("shift", -0.3)))


def parent_exact_neg_elbo(params):
    """Trapezoid quadrature over ``w`` of the sum over ``z``."""
    w = jnp.linspace(-12.0, 12.0, 8001)
    log_q_w = dist.Normal(params["loc"], 1.0).log_prob(w)
    elbo_w = dist.Normal(0.0, 1.0).log_prob(w) - log_q_w + jnp.log(0.5)
    inner = 0.0
    for z in (0.0, 1.0):
        log_q_z = dist.Bernoulli(logits=w + params["shift"]).log_prob(z)
        inner = inner + jnp.exp(log_q_z) * (dist.Normal(w + z, 1.0).log_prob(0.5) - log_q_z)
    return -jnp.trapezoid(jnp.exp(log_q_w) * (elbo_w + inner), w)


def test_disarm_continuous_parent():
    params = {"loc": jnp.array(0.2), "shift": jnp.array(-0.3)}
    exact = exact_gradient(parent_exact_neg_elbo, params)
    samples = gradient_samples(TraceDisARM_ELBO(), parent_model, parent_guide, params, 4000)
    assert_unbiased(samples, exact)


# ------------------------------------------------------------ structure and errors


def test_runs_share_plate_subsamples_and_pair_is_antithetic():
    elbo = TraceRLOO_ELBO(num_particles=3)
    runs = jax.jit(
        lambda key: elbo._runs(key, PLATED_PARAMS, plated_model, plated_guide, (3,), {})
    )(jax.random.PRNGKey(0))
    assert runs["sites"]["z"]["cost"].shape == (3, 3)

    def guide():
        logits = numpyro.param("l", jnp.zeros(1000))
        numpyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    def model():
        numpyro.sample("z", dist.Bernoulli(0.5).expand([1000]).to_event(1))

    pair = jax.jit(
        lambda key: TraceDisARM_ELBO()._runs(key, {"l": jnp.zeros(1000)}, model, guide, (), {})
    )(jax.random.PRNGKey(1))
    values = pair["sites"]["z"]["value"]
    assert bool(jnp.all(values[0] == 1 - values[1]))


def test_svi_under_jit():
    for elbo in (TraceRLOO_ELBO(), TraceDisARM_ELBO()):
        svi = SVI(bernoulli_model, bernoulli_guide, numpyro.optim.Adam(0.05), elbo)
        state = svi.init(jax.random.PRNGKey(0))
        update = jax.jit(svi.update)
        for _ in range(5):
            state, loss = update(state)
        assert jnp.isfinite(loss)


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="num_particles >= 2"):
        TraceRLOO_ELBO(num_particles=1)


def test_disarm_refuses_categorical_site():
    params = {"cat_logits": jnp.array(CATEGORICAL["logits"])}
    with pytest.raises(ValueError, match="guide site 'y' has distribution CategoricalLogits"):
        TraceDisARM_ELBO().loss(jax.random.PRNGKey(0), params, categorical_model, categorical_guide)


def test_disarm_refuses_discrete_parent():
    def guide():
        a = numpyro.sample("a", dist.Bernoulli(0.3))
        numpyro.sample("z", dist.Bernoulli(0.2 + 0.5 * a))

    def model():
        a = numpyro.sample("a", dist.Bernoulli(0.5))
        numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(a, 1.0), obs=0.0)

    with pytest.raises(ValueError, match=r"'z' depend on the discrete guide site\(s\) \['a'\]"):
        TraceDisARM_ELBO().loss(jax.random.PRNGKey(0), {}, model, guide)
