"""numpyro_go.nn.linear absorbs perturbation stacks without changing any gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.example_libraries import stax

import numpyro_go.nn as go_nn
from numpyro_go import TraceGO_ELBO

LATENTS, PIXELS, BATCH = 6, 12, 5
X = (jax.random.uniform(jax.random.PRNGKey(0), (BATCH, PIXELS)) > 0.5).astype(jnp.float32)


def absorbing_dense_spy(out_dim, seen):
    """:func:`numpyro_go.nn.Dense` that records whether its input was a recorded stack."""
    init_fun, apply_fun = go_nn.Dense(out_dim)

    def spying_apply(params, inputs, **kwargs):
        seen.append(any(stack.value is inputs for stack in go_nn._ACTIVE))
        return apply_fun(params, inputs, **kwargs)

    return init_fun, spying_apply


def decoders(seen):
    return {
        "linear": stax.serial(absorbing_dense_spy(PIXELS, seen)),
        "nonlinear": stax.serial(stax.Tanh, absorbing_dense_spy(PIXELS, seen)),
        "two-layer": stax.serial(absorbing_dense_spy(8, seen), stax.Tanh, stax.Dense(PIXELS)),
    }


def conv_decoder():
    return stax.serial(stax.Conv(2, (2, 2), padding="SAME"), stax.Flatten, go_nn.Dense(PIXELS))


def make_problem(decoder, site_shape, reshape=lambda z: z, count=False):
    encoder = stax.serial(stax.Dense(LATENTS))

    def model(x):
        net = numpyro.module("decoder", decoder, (1,) + site_shape)
        with numpyro.plate("data", x.shape[0]):
            prior = (
                dist.Poisson(2.0 * jnp.ones(LATENTS))
                if count
                else dist.Bernoulli(0.4 * jnp.ones(LATENTS))
            )
            z = numpyro.sample("z", prior.to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=net(reshape(z))).to_event(1), obs=x)

    def guide(x):
        net = numpyro.module("encoder", encoder, (1, PIXELS))
        with numpyro.plate("data", x.shape[0]):
            fn = dist.Poisson(jax.nn.softplus(net(x))) if count else dist.Bernoulli(logits=net(x))
            numpyro.sample("z", fn.to_event(1))

    return model, guide


CASES = {
    "linear": ("linear", False),
    "nonlinear": ("nonlinear", False),
    "two-layer": ("two-layer", False),
    "count-linear": ("linear", True),
}


def gradients(model, guide, absorb, key, **options):
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(1e-3), TraceGO_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(1), X))
    elbo = TraceGO_ELBO(absorb_linear=absorb, **options)
    return jax.jit(jax.grad(lambda p: elbo.loss(key, p, model, guide, X)))(params)


@pytest.mark.parametrize("case", list(CASES) + ["conv"])
def test_on_and_off_give_the_same_gradients(case):
    seen = []
    if case == "conv":
        model, guide = make_problem(
            conv_decoder(),
            (2, LATENTS // 2, 1),
            lambda z: z.reshape(z.shape[:-1] + (2, -1, 1)).astype(jnp.float32),
        )
    else:
        name, count = CASES[case]
        model, guide = make_problem(decoders(seen)[name], (LATENTS,), count=count)
    for seed in range(2):
        key = jax.random.PRNGKey(seed)
        on = gradients(model, guide, True, key)
        off = gradients(model, guide, False, key)
        for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(off), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    if case in ("linear", "two-layer", "count-linear"):
        assert any(seen), "the absorbing path was never taken"
    if case == "nonlinear":
        assert not any(seen), "tanh(z) is not the recorded stack: no absorption expected"


@pytest.mark.parametrize(
    "auto_elements", [1, 2 * BATCH * LATENTS], ids=["batches-of-1", "batches-of-2"]
)
def test_auto_chunks_give_the_same_gradients(auto_elements, monkeypatch):
    """``chunk_size="auto"`` evaluates in ``lax.map`` batches (here of 1, and of 2 with
    a remainder: 7 evaluations) with the gradients of one ``vmap`` over all."""
    from numpyro_go.infer import perturbation

    monkeypatch.setattr(perturbation, "AUTO_CHUNK_ELEMENTS", auto_elements)
    model, guide = make_problem(decoders([])["linear"], (LATENTS,))
    key = jax.random.PRNGKey(0)
    auto = gradients(model, guide, True, key, chunk_size="auto")
    whole = gradients(model, guide, True, key, chunk_size=None)
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_linear_outside_a_replay_is_the_product():
    weight = jax.random.normal(jax.random.PRNGKey(2), (LATENTS, PIXELS))
    z = jnp.ones((BATCH, LATENTS))
    np.testing.assert_allclose(go_nn.linear(z, weight, jnp.ones(PIXELS)), z @ weight + 1.0)


@pytest.mark.parametrize(
    "weight_scale, branch",
    [(1.0, 0), (5.0, 1), (10.0, 2), (20.0, 3), (300.0, 4)],
    ids=["groups-of-8", "groups-of-4", "groups-of-2", "per-element", "beyond-exp"],
)
@pytest.mark.parametrize("event", [True, False], ids=["event", "elementwise"])
def test_shifted_bernoulli_likelihood_matches_log_prob(weight_scale, branch, event):
    """The closed-form flipped likelihood equals ``Bernoulli(h ± W[i]).log_prob``, with
    products of 8, 4, 2 or 1 factors as the weights grow, and with the softplus form
    when ``e^W`` would overflow float32."""
    from numpyro_go.infer.perturbation import PRODUCT_LOG_BOUND, shifted_bernoulli_log_prob

    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    base = 3.0 * jax.random.normal(keys[0], (BATCH, PIXELS + 3))
    weight = weight_scale * jax.random.normal(keys[1], (LATENTS, PIXELS + 3))
    # the branch of lax.switch: how many of the group sizes 8, 4, 2, 1 are too large
    largest = float(jnp.max(jnp.abs(weight)))
    too_large = sum(g * largest >= PRODUCT_LOG_BOUND for g in (8, 4, 2, 1))
    assert too_large == branch, "scale misses the branch"
    x = (jax.random.uniform(keys[2], base.shape) > 0.5).astype(jnp.float32)
    change = jnp.array([1.0, -1.0, 0.0, 1.0, -1.0])
    for coordinate in (0, LATENTS - 1):
        logits = base + change[:, None] * weight[coordinate]
        go_nn._SHIFTED.append(go_nn.ShiftedOutput(logits, base, change, coordinate, weight))
        try:
            fn = dist.Bernoulli(logits=logits)
            fn = fn.to_event(1) if event else fn
            structured = shifted_bernoulli_log_prob(fn, x)
        finally:
            go_nn._SHIFTED.clear()
        np.testing.assert_allclose(structured, fn.log_prob(x), rtol=1e-5, atol=2e-4)


def test_linear_vae_takes_the_closed_form_likelihood(monkeypatch):
    from numpyro_go.infer import perturbation

    used = []
    original = perturbation.shifted_bernoulli_log_prob

    def spy(fn, value):
        result = original(fn, value)
        used.append(result is not None)
        return result

    monkeypatch.setattr(perturbation, "shifted_bernoulli_log_prob", spy)
    model, guide = make_problem(decoders([])["linear"], (LATENTS,))
    gradients(model, guide, True, jax.random.PRNGKey(0))
    assert any(used)
