"""The one-line swap on programs written the way NumPyro's examples write them.

NumPyro counterparts of ``tests/pyro/test_real_programs.py``: the semi-supervised VAE
"M2" with ``y`` sampled, an Attend-Infer-Repeat-shaped chain, a sparse gamma deep
exponential family, and the Gaussian mixture and LDA written for ``TraceEnum_ELBO``
(refused with a clear error until model-side enumeration is supported).  Each trains
with :class:`numpyro.infer.SVI` (jitted) and checks what a new user would see.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.example_libraries import stax
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoDelta

from numpyro_go import TraceGO_ELBO
from pyro_go.datasets import dynamic_binarize, load_mnist


def binarized_mnist(num: int, pixels: int = 784, seed: int = 0) -> jnp.ndarray:
    images = load_mnist()["x_train"][:num]
    return jnp.asarray(dynamic_binarize(images, np.random.default_rng(seed))[:, :pixels])


def train(model, guide, *args, steps: int, lr: float = 1e-2, seed: int = 0):
    """``steps`` jitted SVI updates; returns ``(losses, initial params, final params)``."""
    svi = SVI(model, guide, numpyro.optim.Adam(lr), loss=TraceGO_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        state = svi.init(jax.random.PRNGKey(seed), *args)
        initial = svi.get_params(state)
        update = jax.jit(svi.update)
        losses = []
        for _ in range(steps):
            state, loss = update(state, *args)
            losses.append(float(loss))
    return losses, initial, svi.get_params(state)


def assert_trained(losses, initial, final) -> None:
    assert np.all(np.isfinite(losses)), losses
    moved = [k for k in initial if not np.array_equal(initial[k], final[k])]
    assert moved, "no parameter changed"
    for name, value in jax.tree_util.tree_leaves_with_path(final):
        assert np.all(np.isfinite(np.asarray(value))), name


# ------------------------------------------- semi-supervised VAE "M2", y sampled

PIXELS, CLASSES, Z_DIM, HIDDEN = 784, 10, 4, 32


def mlp(out: int):
    return stax.serial(stax.Dense(HIDDEN), stax.Softplus, stax.Dense(out))


def m2_model(xs, ys=None):
    decoder = numpyro.module("decoder", mlp(PIXELS), (xs.shape[0], Z_DIM + CLASSES))
    batch = xs.shape[0]
    with numpyro.plate("data", batch):
        zs = numpyro.sample("z", dist.Normal(jnp.zeros((batch, Z_DIM)), 1.0).to_event(1))
        alpha = jnp.ones((batch, CLASSES)) / CLASSES
        ys = numpyro.sample("y", dist.Categorical(alpha), obs=ys)
        logits = decoder(jnp.concatenate([zs, jax.nn.one_hot(ys, CLASSES)], -1))
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)


def m2_guide(xs, ys=None):
    encoder_y = numpyro.module("encoder_y", mlp(CLASSES), (xs.shape[0], PIXELS))
    encoder_z = numpyro.module("encoder_z", mlp(2 * Z_DIM), (xs.shape[0], PIXELS + CLASSES))
    with numpyro.plate("data", xs.shape[0]):
        if ys is None:
            ys = numpyro.sample("y", dist.Categorical(logits=encoder_y(xs)))
        features = jnp.concatenate([xs, jax.nn.one_hot(ys, CLASSES)], -1)
        loc, log_scale = jnp.split(encoder_z(features), 2, -1)
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


@pytest.mark.parametrize("labelled", [False, True], ids=["y-sampled", "y-observed"])
def test_semi_supervised_vae_m2_trains(labelled):
    xs = binarized_mnist(16)
    ys = jnp.arange(16) % CLASSES if labelled else None
    assert_trained(*train(m2_model, m2_guide, xs, ys, steps=8, lr=3e-3))


# ------------------------------------------------- Attend-Infer-Repeat, in miniature

STEPS, WHERE, WHAT, AIR_PIXELS = 3, 2, 3, 16


def air_model(data):
    render_w = numpyro.param("render_w", 0.3 * jnp.ones((WHERE + WHAT, AIR_PIXELS)))
    n = data.shape[0]
    with numpyro.plate("data", n):
        canvas = jnp.zeros((n, AIR_PIXELS))
        z_pres = jnp.ones((n, 1))
        for t in range(STEPS):
            prior_logit = jnp.where(z_pres > 0, 0.0, -30.0)
            z_pres = numpyro.sample(f"z_pres_{t}", dist.Bernoulli(logits=prior_logit).to_event(1))
            mask = z_pres.astype(bool)
            z_where = numpyro.sample(
                f"z_where_{t}", dist.Normal(jnp.zeros((n, WHERE)), 1.0).mask(mask).to_event(1)
            )
            z_what = numpyro.sample(
                f"z_what_{t}", dist.Normal(jnp.zeros((n, WHAT)), 1.0).mask(mask).to_event(1)
            )
            canvas = canvas + z_pres * jnp.tanh(jnp.concatenate([z_where, z_what], -1) @ render_w)
        numpyro.sample("obs", dist.Normal(canvas, 0.3).to_event(1), obs=data)


def air_guide(data):
    n = data.shape[0]
    sizes = 1 + 2 * (WHERE + WHAT)
    weights = numpyro.param("predict_w", 0.01 * jnp.ones((AIR_PIXELS + 1, sizes)))
    with numpyro.plate("data", n):
        z_pres = jnp.ones((n, 1))
        for t in range(STEPS):
            out = jnp.concatenate([data, jnp.full((n, 1), float(t))], -1) @ weights
            pres_logit, where_loc, where_scale, what_loc, what_scale = jnp.split(
                out, np.cumsum([1, WHERE, WHERE, WHAT]), -1
            )
            # logits rather than Pyro's ``probs * z_pres``: a Bernoulli with probs exactly
            # 0 has a NaN gradient in JAX (NumPyro's own TraceGraph_ELBO gets NaN too)
            stopped_logit = jnp.where(z_pres > 0, pres_logit, -30.0)
            z_pres = numpyro.sample(f"z_pres_{t}", dist.Bernoulli(logits=stopped_logit).to_event(1))
            mask = z_pres.astype(bool)
            numpyro.sample(
                f"z_where_{t}",
                dist.Normal(where_loc, jax.nn.softplus(where_scale)).mask(mask).to_event(1),
            )
            numpyro.sample(
                f"z_what_{t}",
                dist.Normal(what_loc, jax.nn.softplus(what_scale)).mask(mask).to_event(1),
            )


def test_air_shaped_chain_trains():
    data = binarized_mnist(12, pixels=AIR_PIXELS)
    assert_trained(*train(air_model, air_guide, data, steps=8))


# --------------------------------------------------------- sparse gamma DEF


def sparse_gamma_def(data, top=3, mid=4):
    pixels = data.shape[-1]
    with numpyro.plate("w_top_plate", top * mid):
        w_top = numpyro.sample("w_top", dist.Gamma(0.1, 0.3))
    with numpyro.plate("w_bottom_plate", mid * pixels):
        w_bottom = numpyro.sample("w_bottom", dist.Gamma(0.1, 0.3))
    with numpyro.plate("data", data.shape[0]):
        z_top = numpyro.sample("z_top", dist.Gamma(0.1, 0.1).expand([top]).to_event(1))
        mean_mid = z_top @ w_top.reshape(top, mid)
        z_mid = numpyro.sample("z_mid", dist.Gamma(0.1, 0.1 / mean_mid).to_event(1))
        mean_obs = z_mid @ w_bottom.reshape(mid, pixels)
        numpyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=data)


def sparse_gamma_def_guide(data, top=3, mid=4):
    pixels = data.shape[-1]

    def gamma(name, shape):
        alpha = jax.nn.softplus(numpyro.param(f"alpha_{name}", jnp.full(shape, -0.5))) + 0.1
        mean = jax.nn.softplus(numpyro.param(f"mean_{name}", jnp.full(shape, -0.5)))
        return dist.Gamma(alpha, alpha / mean)

    with numpyro.plate("w_top_plate", top * mid):
        numpyro.sample("w_top", gamma("w_top", (top * mid,)))
    with numpyro.plate("w_bottom_plate", mid * pixels):
        numpyro.sample("w_bottom", gamma("w_bottom", (mid * pixels,)))
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("z_top", gamma("z_top", (data.shape[0], top)).to_event(1))
        numpyro.sample("z_mid", gamma("z_mid", (data.shape[0], mid)).to_event(1))


def test_sparse_gamma_def_trains():
    data = jax.random.poisson(jax.random.PRNGKey(1), 3.0, (10, 6)).astype(jnp.float32)
    losses, initial, final = train(
        sparse_gamma_def, sparse_gamma_def_guide, data, steps=60, lr=0.05
    )
    assert_trained(losses, initial, final)
    assert np.mean(losses[-15:]) < np.mean(losses[:15])


# --------------------------- model-side enumeration: refused, naming the site

K = 3


def gaussian_mixture(data):
    weights = numpyro.sample("weights", dist.Dirichlet(0.5 * jnp.ones(K)))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with numpyro.plate("components", K):
        locs = numpyro.sample("locs", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", len(data)):
        assignment = numpyro.sample(
            "assignment", dist.Categorical(weights), infer={"enumerate": "parallel"}
        )
        numpyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def test_gaussian_mixture_with_model_enumeration_is_refused():
    data = jnp.array([0.0, 1.0, 10.0, 11.0, 12.0])
    guide = AutoDelta(numpyro.handlers.block(gaussian_mixture, hide=["assignment"]))
    svi = SVI(gaussian_mixture, guide, numpyro.optim.Adam(0.1), loss=TraceGO_ELBO())
    state = svi.init(jax.random.PRNGKey(0), data)
    with pytest.raises(ValueError, match="(?s)'assignment'.*enumerat.*TraceEnum_ELBO"):
        svi.update(state, data)


def lda_model(data, num_topics=3, num_words=8):
    num_words_per_doc, num_docs = data.shape
    with numpyro.plate("topics", num_topics):
        topic_weights = numpyro.sample("topic_weights", dist.Gamma(1.0 / num_topics, 1.0))
        topic_words = numpyro.sample("topic_words", dist.Dirichlet(jnp.ones(num_words) / num_words))
    with numpyro.plate("documents", num_docs):
        doc_topics = numpyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with numpyro.plate("words", num_words_per_doc):
            word_topics = numpyro.sample(
                "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
            )
            numpyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)


def lda_guide(data, num_topics=3, num_words=8):
    positive = dist.constraints.positive
    num_docs = data.shape[1]
    weights_q = numpyro.param("topic_weights_q", jnp.ones(num_topics), constraint=positive)
    words_q = numpyro.param("topic_words_q", jnp.ones((num_topics, num_words)), constraint=positive)
    docs_q = numpyro.param("doc_topics_q", jnp.ones((num_docs, num_topics)), constraint=positive)
    with numpyro.plate("topics", num_topics):
        numpyro.sample("topic_weights", dist.Gamma(weights_q, 1.0))
        numpyro.sample("topic_words", dist.Dirichlet(words_q))
    with numpyro.plate("documents", num_docs):
        numpyro.sample("doc_topics", dist.Dirichlet(docs_q))


def test_lda_with_enumerated_word_topics_is_refused():
    data = jax.random.randint(jax.random.PRNGKey(0), (5, 4), 0, 8)
    svi = SVI(lda_model, lda_guide, numpyro.optim.Adam(0.1), loss=TraceGO_ELBO())
    state = svi.init(jax.random.PRNGKey(0), data)
    with pytest.raises(ValueError, match="(?s)'word_topics'.*enumerat.*TraceEnum_ELBO"):
        svi.update(state, data)
