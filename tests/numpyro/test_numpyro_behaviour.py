"""numpyro_go.TraceGO_ELBO inside NumPyro: jit, SVI, handlers, errors, fallbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.example_libraries import stax
from jax_helpers import exact_gradient, gradient_samples
from numpyro import handlers
from numpyro.infer import SVI
from unbiasedness import assert_unbiased

from numpyro_go import RELAX, TraceGO_ELBO, TraceRELAX_ELBO, go_surrogate
from numpyro_go.distributions import GOPoisson
from numpyro_go.infer import NonFiniteLossError, run_checked, update_checked


def count_model(data):
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Poisson(3.0))
        numpyro.sample("x", dist.Poisson(z + 0.5), obs=data)


def count_guide(data):
    rate = numpyro.param("rate", jnp.ones(data.shape[0]), constraint=dist.constraints.positive)
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z", dist.Poisson(rate))


DATA = jnp.array([0.0, 2.0, 7.0, 4.0])


def test_jitted_and_eager_gradients_agree():
    params = {"rate": jnp.array([1.0, 2.0, 3.0, 4.0])}
    elbo = TraceGO_ELBO()
    key = jax.random.PRNGKey(3)

    def grad(p):
        return jax.grad(lambda q: elbo.loss(key, q, count_model, count_guide, DATA))(p)["rate"]

    np.testing.assert_allclose(jax.jit(grad)(params), grad(params), rtol=1e-5, atol=1e-6)
    # the plate batches the 4 sites' y+1 perturbations into one evaluation, plus the base
    assert elbo.last_num_evaluations == 2


def test_svi_run_is_jitted_and_learns():
    svi = SVI(count_model, count_guide, numpyro.optim.Adam(0.05), loss=TraceGO_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 600, DATA, progress_bar=False)
    losses = np.asarray(result.losses)
    assert np.all(np.isfinite(losses))
    assert losses[-100:].mean() < losses[:100].mean() - 1.0
    # the posterior mean of z grows with the observed count
    rates = np.asarray(result.params["rate"])
    assert np.all(np.diff(rates[np.argsort(np.asarray(DATA))]) > 0)


def test_scale_handler_scales_the_gradient():
    params = {"rate": jnp.array([1.0, 2.0, 3.0, 4.0])}
    key = jax.random.PRNGKey(5)
    elbo = TraceGO_ELBO()

    def grad(model, guide):
        return jax.grad(lambda p: elbo.loss(key, p, model, guide, DATA))(params)["rate"]

    plain = grad(count_model, count_guide)
    scaled = grad(handlers.scale(count_model, 3.0), handlers.scale(count_guide, 3.0))
    np.testing.assert_allclose(scaled, 3.0 * plain, rtol=1e-5)


def test_masked_observation_gives_the_prior_gradient():
    """With every observation masked out, the guide is pulled towards the prior only."""
    params = {"rate": jnp.array([1.0, 2.0, 3.0, 4.0])}

    def masked_model(data):
        with numpyro.plate("data", data.shape[0]):
            z = numpyro.sample("z", dist.Poisson(3.0))
            with handlers.mask(mask=jnp.zeros(data.shape[0], bool)):
                numpyro.sample("x", dist.Poisson(z + 0.5), obs=data)

    def prior_model(data):
        with numpyro.plate("data", data.shape[0]):
            numpyro.sample("z", dist.Poisson(3.0))

    elbo = TraceGO_ELBO()
    key = jax.random.PRNGKey(2)
    grads = [
        jax.grad(lambda p, m=m: elbo.loss(key, p, m, count_guide, DATA))(params)["rate"]
        for m in (masked_model, prior_model)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_stax_module_in_model_and_guide():
    """``numpyro.module`` networks (stax) in both model and guide, Bernoulli latents."""
    encoder = stax.serial(stax.Dense(3))
    decoder = stax.serial(stax.Dense(5))
    x = (jax.random.uniform(jax.random.PRNGKey(0), (8, 5)) > 0.5).astype(jnp.float32)

    def model(x):
        net = numpyro.module("decoder", decoder, (x.shape[0], 3))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(0.5 * jnp.ones(3)).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=net(z)).to_event(1), obs=x)

    def guide(x):
        net = numpyro.module("encoder", encoder, (x.shape[0], 5))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Bernoulli(logits=net(x)).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(0.01), loss=TraceGO_ELBO())
    result = svi.run(jax.random.PRNGKey(1), 200, x, progress_bar=False)
    assert np.all(np.isfinite(np.asarray(result.losses)))
    assert result.losses[-20:].mean() < result.losses[:20].mean()


# ------------------------------------------------------------------------------ errors


class NoRuleNormal(dist.Normal):
    """No pathwise sampler and no cdf: nothing GO can use."""

    reparametrized_params = []
    cdf = dist.Distribution.cdf


def test_site_without_rule_is_named():
    """Warned (score function) by default, an error under ``strict=True``; the
    gradients are checked in test_numpyro_parity.py."""

    def model():
        numpyro.sample("w", dist.Normal(0.0, 1.0))

    def guide():
        numpyro.sample("w", NoRuleNormal(0.0, 1.0))

    with pytest.warns(UserWarning, match="guide site 'w'.*NoRuleNormal.*score-function"):
        TraceGO_ELBO().loss(jax.random.PRNGKey(0), {}, model, guide)
    with pytest.raises(ValueError, match="guide site 'w'.*register_go_rule"):
        TraceGO_ELBO(strict=True).loss(jax.random.PRNGKey(0), {}, model, guide)


def test_enumerated_guide_site_raises():
    def model():
        numpyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="'z' asks for enumeration"):
        TraceGO_ELBO().loss(jax.random.PRNGKey(0), {}, model, guide)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="categorical_form"):
        TraceGO_ELBO(categorical_form="other")
    with pytest.raises(ValueError, match="chunk_size"):
        TraceGO_ELBO(chunk_size=0)


# ------------------------------------------- discrete internal site: score fallback


def internal_model():
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    n = numpyro.sample("n", dist.Poisson(3.0))
    numpyro.sample("x", dist.Poisson(n + 0.5 + z), obs=3.0)


def internal_guide():
    a = numpyro.param("a", jnp.array(0.3))
    z = numpyro.sample("z", dist.Bernoulli(logits=a))
    numpyro.sample("n", dist.Poisson(1.0 + 2.0 * z))


def internal_exact_neg_elbo(params):
    n = jnp.arange(60.0)
    total = 0.0
    for z in (0.0, 1.0):
        log_q_z = dist.Bernoulli(logits=params["a"]).log_prob(z)
        log_q_n = dist.Poisson(1.0 + 2.0 * z).log_prob(n)
        log_p = (
            dist.Bernoulli(0.5).log_prob(z)
            + dist.Poisson(3.0).log_prob(n)
            + dist.Poisson(n + 0.5 + z).log_prob(3.0)
        )
        total = total + jnp.sum(jnp.exp(log_q_z + log_q_n) * (log_p - log_q_z - log_q_n))
    return -total


def test_internal_discrete_site_warns_and_stays_unbiased():
    params = {"a": jnp.array(0.3)}
    with pytest.warns(UserWarning, match="'z' has children in the guide"):
        samples = gradient_samples(TraceGO_ELBO(), internal_model, internal_guide, params, 4000)
    assert_unbiased(samples, exact_gradient(internal_exact_neg_elbo, params))


def test_internal_discrete_site_strict_raises():
    with pytest.raises(ValueError, match="strict=False"):
        TraceGO_ELBO(strict=True).loss(
            jax.random.PRNGKey(0), {"a": jnp.array(0.3)}, internal_model, internal_guide
        )


# ------------------------------------------------------------------- go_surrogate


def test_go_surrogate_poisson_is_unbiased():
    """``∇_λ E[−(y − 4)²] = −(1 + 2(λ − 4))`` for ``y ~ Poisson(λ)``."""
    rate = jnp.array([2.0, 5.0])

    def estimate(key):
        return jax.grad(
            lambda r: GOPoisson(r).go_surrogate(lambda y: -jnp.sum((y - 4.0) ** 2), key)
        )(rate)

    samples = jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.PRNGKey(0), 3000))
    assert_unbiased(np.asarray(samples), -(1 + 2 * (np.asarray(rate) - 4.0)))


def test_go_surrogate_value_and_errors():
    fn = dist.Poisson(jnp.array([2.0, 5.0]))
    value = jnp.array([1.0, 3.0])
    assert go_surrogate(fn, lambda y: jnp.sum(y), value=value) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="rng_key"):
        go_surrogate(fn, jnp.sum)
    with pytest.raises(ValueError, match="pathwise sampler"):
        go_surrogate(dist.Normal(0.0, 1.0), jnp.sum, value=jnp.array(0.0))


# ------------------------------------------------------- non-finite data and losses


def _svi(elbo_name, model, guide, optim=None):
    optim = numpyro.optim.Adam(0.1) if optim is None else optim
    if elbo_name == "relax":
        elbo = TraceRELAX_ELBO(RELAX())
        guide = elbo.wrap_guide(guide)
    else:
        elbo = TraceGO_ELBO()
    return SVI(model, guide, optim, elbo)


def normal_means_model(data, mask=True):
    with numpyro.plate("data", data.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0).mask(mask), obs=data)


def normal_means_guide(data, mask=True):
    logits = numpyro.param("logits", jnp.zeros(data.shape[0]))
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z", dist.Bernoulli(logits=logits))


INF_DATA = jnp.array([0.5, jnp.inf, 2.0])


@pytest.mark.parametrize("elbo", ["go", "relax"])
@pytest.mark.parametrize("masked", [False, True])
def test_non_finite_observation_is_named_when_traced(elbo, masked):
    """``svi.update`` and ``svi.run`` (which closes over its data) see the data when the
    ELBO is traced: ``inf``, masked or not, raises naming the site."""
    svi = _svi(elbo, normal_means_model, normal_means_guide)
    mask = jnp.array([True, not masked, True])
    state = svi.init(jax.random.PRNGKey(0), DATA[:3], mask)
    match = "observed site 'x' \\(1 of 3 values, e.g. inf at \\(1,\\)\\)"
    with pytest.raises(ValueError, match=match):
        svi.update(state, INF_DATA, mask)
    with pytest.raises(ValueError, match=match):
        svi.run(jax.random.PRNGKey(0), 2, INF_DATA, mask, progress_bar=False)


def test_update_checked_names_data_hidden_by_jit():
    """Under ``jax.jit(svi.update)`` the data are abstract when traced; update_checked
    sees the non-finite loss and names the site, keeping the state before the step."""
    svi = _svi("go", normal_means_model, normal_means_guide)
    state = svi.init(jax.random.PRNGKey(0), DATA[:3])
    update = jax.jit(svi.update)
    state, _ = update_checked(svi, state, DATA[:3], update_fn=update)
    with pytest.raises(NonFiniteLossError, match="observed site 'x'.*model site 'x'") as error:
        update_checked(svi, state, INF_DATA, update_fn=update)
    assert error.value.state is state
    _, loss = update_checked(svi, error.value.state, DATA[:3], update_fn=update)
    assert np.isfinite(float(loss))


def drifting_model(data):
    """``a`` climbs (the factor ``10 a``) into ``log(1 − a)``'s nan region at step 3."""
    normal_means_model(data)
    a = numpyro.param("a", 0.0)
    numpyro.factor("constraint", 10.0 * a + jnp.log(1.0 - a))


@pytest.mark.parametrize("elbo", ["go", "relax"])
def test_run_checked_stops_at_the_first_non_finite_step(elbo):
    svi = _svi(elbo, drifting_model, normal_means_guide, numpyro.optim.SGD(0.05))
    with pytest.raises(NonFiniteLossError, match="step 3.*model site 'constraint'") as error:
        run_checked(svi, jax.random.PRNGKey(0), 6, DATA[:3])
    assert error.value.step == 3
    params = svi.get_params(error.value.state)
    assert all(np.all(np.isfinite(value)) for value in jax.tree.leaves(params))
    assert 1.0 < float(params["a"]) < 1.01  # where step 3 started
    if elbo == "go":  # without the drift every step is taken
        svi = _svi(elbo, normal_means_model, normal_means_guide)
        result = run_checked(svi, jax.random.PRNGKey(0), 6, DATA[:3])
        assert result.losses.shape == (6,) and np.all(np.isfinite(result.losses))
        assert not np.allclose(result.params["logits"], 0.0)


# ------------------------------------- model-side enumeration (TraceEnum_ELBO models)

MIXTURE_DATA = jnp.array([-2.1, -1.9, 2.0, 2.2, 1.8])


def mixture_model(data):
    """As ``config_enumerate`` (numpyro.contrib.funsor) would mark it."""
    weights = numpyro.param("weights", jnp.ones(2) / 2, constraint=dist.constraints.simplex)
    locs = numpyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    with numpyro.plate("data", data.shape[0]):
        assignment = numpyro.sample(
            "assignment", dist.Categorical(weights), infer={"enumerate": "parallel"}
        )
        numpyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)


def mixture_guide(data):
    locs = numpyro.param("locs_loc", jnp.array([-1.0, 1.0]))
    numpyro.sample("locs", dist.Normal(locs, 0.1).to_event(1))


@pytest.mark.parametrize("elbo", ["go", "relax"])
def test_model_side_enumeration_is_refused(elbo):
    """A mixture written for TraceEnum_ELBO: the assignments have no guide site, and
    drawing them from the prior would be another objective (the components collapse)."""
    svi = _svi(elbo, mixture_model, mixture_guide)
    match = "model site 'assignment' asks for enumeration.*no guide site.*TraceEnum_ELBO"
    state = svi.init(jax.random.PRNGKey(0), MIXTURE_DATA)
    with pytest.raises(ValueError, match=match):
        svi.update(state, MIXTURE_DATA)
