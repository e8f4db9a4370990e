"""The discrete VAE of the GO paper (appendix I, eq. 32) as a NumPyro model and guide
(the twin of :class:`pyro_go.contrib.DiscreteVAE`).

``p(x, z) = Bern(x; σ(NN_{x|z}(z))) Bern(z; σ(prior_logits))`` and
``q(z | x) = Bern(z; σ(NN_{z|x}(x)))``.  ``hidden=()`` gives the "1-layer linear"
networks; ``hidden=(200, 200)`` the tanh "nonlinear" ones.  Networks are
:mod:`jax.example_libraries.stax` layers registered with :func:`numpyro.module`; the
decoder's first layer is :func:`numpyro_go.nn.Dense`, so ``TraceGO_ELBO`` evaluates the
200 flips of ``z`` as ``h + d_k W_k`` (appendix I) instead of 200 matrix products.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax

from numpyro_go.nn import Dense


def _network(hidden: Sequence[int], outputs: int, absorbing_input: bool = False):
    """tanh MLP; with ``absorbing_input`` its first layer is :func:`numpyro_go.nn.Dense`,
    which absorbs the perturbation stacks of ``TraceGO_ELBO``."""
    sizes = [*hidden, outputs]
    layers = []
    for index, size in enumerate(sizes):
        layers.append(Dense(size) if index == 0 and absorbing_input else stax.Dense(size))
        if index < len(sizes) - 1:
            layers.append(stax.Tanh)
    return stax.serial(*layers)


class DiscreteVAE:
    """Bernoulli-latent VAE with ``model(x)`` and ``guide(x)`` for
    :class:`numpyro.infer.SVI`.

    :param latents: number of Bernoulli latents (200 in the paper).
    :param pixels: data dimension (784 for 28x28 images).
    :param hidden: hidden layer sizes of both networks (``()`` = linear).
    """

    def __init__(self, latents: int = 200, pixels: int = 784, hidden: Sequence[int] = ()):
        self.latents, self.pixels = latents, pixels
        self.encoder = _network(hidden, latents)
        self.decoder = _network(tuple(reversed(hidden)), pixels, absorbing_input=True)

    def model(self, x: jnp.ndarray) -> None:
        decoder = numpyro.module("decoder", self.decoder, (1, self.latents))
        prior_logits = numpyro.param("prior_logits", jnp.zeros(self.latents))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(logits=prior_logits).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(self, x: jnp.ndarray) -> None:
        encoder = numpyro.module("encoder", self.encoder, (1, self.pixels))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))
