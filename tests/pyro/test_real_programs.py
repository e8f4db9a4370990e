"""The one-line swap on programs written the way Pyro's own examples write them.

Each test takes a model/guide pair in the shape of an official Pyro example
(``examples/vae/ss_vae_M2.py``, ``examples/air/air.py``, ``examples/sparse_gamma_def.py``,
the Gaussian-mixture tutorial, ``examples/lda.py``), shrunk to run in seconds, swaps
the ELBO for :class:`~pyro_go.TraceGO_ELBO` and trains it with :class:`~pyro.infer.SVI`.
What they check is what a new user would see: no crash, finite losses, parameters that
move, an objective that improves, and a clear error where the library cannot be right
yet.  Gradient *correctness* on the same shapes is checked against exact gradients in
``test_internal_sites.py``, ``test_control_flow.py`` and ``test_parity.py``.
"""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceGraph_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam
from torch import nn

from pyro_go import TraceGO_ELBO
from pyro_go.datasets import dynamic_binarize, load_mnist


def binarized_mnist(num: int, pixels: int = 784, seed: int = 0) -> torch.Tensor:
    images = load_mnist()["x_train"][:num]
    data = dynamic_binarize(images, np.random.default_rng(seed))[:, :pixels]
    return torch.as_tensor(data)


def train(model, guide, elbo, *args, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` SVI steps; returns the losses (warnings about documented fallbacks are
    the subject of other tests)."""
    svi = SVI(model, guide, Adam({"lr": lr}), loss=elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [svi.step(*args) for _ in range(steps)]


def parameter_snapshot() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store.keys()}


def assert_trained(before: dict, losses: list[float]) -> None:
    assert all(np.isfinite(losses)), losses
    after = parameter_snapshot()
    assert before.keys() <= after.keys()
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved, "no parameter changed"
    for name, value in after.items():
        assert torch.isfinite(value).all(), name


# ------------------------------------------- semi-supervised VAE "M2", y sampled


class SemiSupervisedVAE(nn.Module):
    """``examples/vae/ss_vae_M2.py`` in miniature: ``y`` is a guide site with a
    continuous guide child ``z | y``."""

    def __init__(self, pixels=784, classes=10, z_dim=4, hidden=32):
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.encoder_y = nn.Sequential(
            nn.Linear(pixels, hidden), nn.Softplus(), nn.Linear(hidden, classes)
        )
        self.encoder_z = nn.Sequential(
            nn.Linear(pixels + classes, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + classes, hidden), nn.Softplus(), nn.Linear(hidden, pixels)
        )

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch = xs.shape[0]
        with pyro.plate("data", batch):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch, self.z_dim), 1.0).to_event(1))
            alpha = xs.new_ones(batch, self.classes) / self.classes
            ys = pyro.sample("y", dist.OneHotCategorical(alpha), obs=ys)
            logits = self.decoder(torch.cat([zs, ys], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(torch.cat([xs, ys], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.mark.parametrize("labelled", [False, True], ids=["y-sampled", "y-observed"])
def test_semi_supervised_vae_m2_trains(labelled):
    xs = binarized_mnist(16)
    ys = nn.functional.one_hot(torch.arange(16) % 10, 10).float() if labelled else None
    vae = SemiSupervisedVAE()
    pyro.module("ss_vae", vae)
    before = parameter_snapshot()
    losses = train(vae.model, vae.guide, TraceGO_ELBO(), xs, ys, steps=8, lr=3e-3)
    assert_trained(before, losses)


# ------------------------------------------------- Attend-Infer-Repeat, in miniature


class TinyAIR(nn.Module):
    """``examples/air/air.py``'s structure on 4x4 images: up to three steps, each with a
    Bernoulli ``z_pres`` (zero once a step has said stop) and continuous ``z_where`` /
    ``z_what`` children masked by it; a linear renderer replaces the spatial
    transformer."""

    steps, where_dim, what_dim, pixels = 3, 2, 3, 16

    def __init__(self):
        super().__init__()
        self.render = nn.Linear(self.where_dim + self.what_dim, self.pixels)
        self.predict = nn.Linear(self.pixels + 1, 1 + 2 * (self.where_dim + self.what_dim))

    def model(self, data):
        pyro.module("air", self)
        n = data.shape[0]
        with pyro.plate("data", n):
            canvas = data.new_zeros(n, self.pixels)
            z_pres = data.new_ones(n, 1)
            for t in range(self.steps):
                z_pres = pyro.sample(f"z_pres_{t}", dist.Bernoulli(0.5 * z_pres).to_event(1))
                mask = z_pres.bool()
                z_where = pyro.sample(
                    f"z_where_{t}",
                    dist.Normal(data.new_zeros(n, self.where_dim), 1.0).mask(mask).to_event(1),
                )
                z_what = pyro.sample(
                    f"z_what_{t}",
                    dist.Normal(data.new_zeros(n, self.what_dim), 1.0).mask(mask).to_event(1),
                )
                canvas = canvas + z_pres * torch.tanh(self.render(torch.cat([z_where, z_what], -1)))
            pyro.sample("obs", dist.Normal(canvas, 0.3).to_event(1), obs=data)

    def guide(self, data):
        n = data.shape[0]
        sizes = (1, self.where_dim, self.where_dim, self.what_dim, self.what_dim)
        with pyro.plate("data", n):
            z_pres = data.new_ones(n, 1)
            for t in range(self.steps):
                step = data.new_full((n, 1), float(t))
                out = self.predict(torch.cat([data, step], -1)).split(sizes, -1)
                pres_logit, where_loc, where_scale, what_loc, what_scale = out
                z_pres = pyro.sample(
                    f"z_pres_{t}",
                    dist.Bernoulli(torch.sigmoid(pres_logit) * z_pres).to_event(1),
                )
                mask = z_pres.bool()
                pyro.sample(
                    f"z_where_{t}",
                    dist.Normal(where_loc, nn.functional.softplus(where_scale))
                    .mask(mask)
                    .to_event(1),
                )
                pyro.sample(
                    f"z_what_{t}",
                    dist.Normal(what_loc, nn.functional.softplus(what_scale))
                    .mask(mask)
                    .to_event(1),
                )


def test_air_shaped_chain_trains():
    data = binarized_mnist(12, pixels=TinyAIR.pixels)
    air = TinyAIR()
    pyro.module("air", air)
    before = parameter_snapshot()
    losses = train(air.model, air.guide, TraceGO_ELBO(), data, steps=8)
    assert_trained(before, losses)


# ------------------------------------- sparse gamma DEF, non-reparameterised guide


def sparse_gamma_def(data, widths=(3, 4)):
    """``examples/sparse_gamma_def.py``'s model, two layers: Gamma weights and Gamma
    latents, Poisson counts."""
    top, mid = widths
    pixels = data.shape[-1]
    with pyro.plate("w_top_plate", top * mid, dim=-1):
        w_top = pyro.sample("w_top", dist.Gamma(0.1, 0.3))
    with pyro.plate("w_bottom_plate", mid * pixels, dim=-1):
        w_bottom = pyro.sample("w_bottom", dist.Gamma(0.1, 0.3))
    with pyro.plate("data", data.shape[0], dim=-2):
        with pyro.plate("top_units", top, dim=-1):
            z_top = pyro.sample("z_top", dist.Gamma(0.1, 0.1))
        mean_mid = z_top @ w_top.reshape(top, mid)
        with pyro.plate("mid_units", mid, dim=-1):
            z_mid = pyro.sample("z_mid", dist.Gamma(0.1, 0.1 / mean_mid))
        mean_obs = z_mid @ w_bottom.reshape(mid, pixels)
        with pyro.plate("pixels", pixels, dim=-1):
            pyro.sample("obs", dist.Poisson(mean_obs), obs=data)


def sparse_gamma_def_guide(data, widths=(3, 4)):
    """The example's mean-field Gamma guide, with every site marked
    non-reparameterised (``has_rsample_(False)``), as Pyro users do to force the
    score function."""
    top, mid = widths
    pixels = data.shape[-1]

    def gamma_site(name, shape):
        shape_param = pyro.param(f"alpha_{name}", lambda: torch.full(shape, 0.5).log())
        mean = pyro.param(f"mean_{name}", lambda: torch.full(shape, 0.5).log())
        alpha = nn.functional.softplus(shape_param) + 0.1
        rate = alpha / nn.functional.softplus(mean)
        return dist.Gamma(alpha, rate).has_rsample_(False)

    with pyro.plate("w_top_plate", top * mid, dim=-1):
        pyro.sample("w_top", gamma_site("w_top", (top * mid,)))
    with pyro.plate("w_bottom_plate", mid * pixels, dim=-1):
        pyro.sample("w_bottom", gamma_site("w_bottom", (mid * pixels,)))
    # per-unit plates instead of the example's ``.to_event(1)``: Pyro's plate broadcast
    # cannot copy ``has_rsample`` onto an expanded ``Independent``
    with pyro.plate("data", data.shape[0], dim=-2):
        with pyro.plate("top_units", top, dim=-1):
            pyro.sample("z_top", gamma_site("z_top", (data.shape[0], top)))
        with pyro.plate("mid_units", mid, dim=-1):
            pyro.sample("z_mid", gamma_site("z_mid", (data.shape[0], mid)))


def test_sparse_gamma_def_with_non_reparameterised_guide_trains():
    data = torch.distributions.Poisson(3.0).sample((10, 6))
    sparse_gamma_def_guide(data)
    before = parameter_snapshot()
    losses = train(sparse_gamma_def, sparse_gamma_def_guide, TraceGO_ELBO(), data, steps=30)
    assert_trained(before, losses)


def test_sparse_gamma_def_trains_where_tracegraph_trains():
    """Both ELBOs run on the same program; GO's loss over the last steps is no worse
    than the score function's (same seed, same number of steps)."""
    data = torch.distributions.Poisson(3.0).sample((10, 6))
    results = {}
    for name, elbo in (("go", TraceGO_ELBO()), ("tracegraph", TraceGraph_ELBO())):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        losses = train(sparse_gamma_def, sparse_gamma_def_guide, elbo, data, steps=60, lr=0.05)
        assert all(np.isfinite(losses)), name
        results[name] = float(np.mean(losses[-15:]))
    assert results["go"] < results["tracegraph"] + 5.0, results


# --------------------------- model-side enumeration: refused, naming the site


K = 3


@config_enumerate
def gaussian_mixture(data):
    """The Gaussian mixture of Pyro's GMM tutorial, written for ``TraceEnum_ELBO``."""
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def test_gaussian_mixture_with_model_enumeration_is_refused():
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])
    guide = AutoDelta(poutine.block(gaussian_mixture, expose=["weights", "locs", "scale"]))
    svi = SVI(gaussian_mixture, guide, Adam({"lr": 0.1}), loss=TraceGO_ELBO(max_plate_nesting=1))
    with pytest.raises(ValueError, match="(?s)'assignment'.*enumerat.*TraceEnum_ELBO"):
        svi.step(data)


def lda_model(data, num_topics=3, num_words=8):
    """``examples/lda.py``'s model: word topics enumerated in the model."""
    num_words_per_doc, num_docs = data.shape
    with pyro.plate("topics", num_topics):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / num_topics, 1.0))
        topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(num_words) / num_words))
    with pyro.plate("documents", num_docs):
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", num_words_per_doc):
            word_topics = pyro.sample(
                "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
            )
            pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)


def lda_guide(data, num_topics=3, num_words=8):
    num_docs = data.shape[1]
    weights_q = pyro.param(
        "topic_weights_q", torch.ones(num_topics), constraint=dist.constraints.positive
    )
    words_q = pyro.param(
        "topic_words_q", torch.ones(num_topics, num_words), constraint=dist.constraints.positive
    )
    docs_q = pyro.param(
        "doc_topics_q", torch.ones(num_docs, num_topics), constraint=dist.constraints.positive
    )
    with pyro.plate("topics", num_topics):
        pyro.sample("topic_weights", dist.Gamma(weights_q, 1.0))
        pyro.sample("topic_words", dist.Dirichlet(words_q))
    with pyro.plate("documents", num_docs):
        pyro.sample("doc_topics", dist.Dirichlet(docs_q))


def test_lda_with_enumerated_word_topics_is_refused():
    data = torch.randint(0, 8, (5, 4))
    elbo = TraceGO_ELBO(max_plate_nesting=2)
    with pytest.raises(ValueError, match="(?s)'word_topics'.*enumerat.*TraceEnum_ELBO"):
        elbo.differentiable_loss(lda_model, lda_guide, data)
