"""The discrete VAE of the GO paper (appendix I, eq. 32) as a NumPyro model and guide
(the twin of :class:`pyro_go.contrib.DiscreteVAE`).

``p(x, z) = Bern(x; σ(NN_{x|z}(z))) Bern(z; σ(prior_logits))`` and
``q(z | x) = Bern(z; σ(NN_{z|x}(x)))``.  ``hidden=()`` gives the "1-layer linear"
networks; ``hidden=(200, 200)`` the tanh "nonlinear" ones.  Networks are
:mod:`jax.example_libraries.stax` layers registered with :func:`numpyro.module`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax


def _network(hidden: Sequence[int], outputs: int):
    layers = []
    for size in hidden:
        layers += [stax.Dense(size), stax.Tanh]
    return stax.serial(*layers, stax.Dense(outputs))


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
        self.decoder = _network(tuple(reversed(hidden)), pixels)

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
