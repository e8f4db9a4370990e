"""The discrete VAE of the GO paper (appendix I, eq. 32), as a Pyro model and guide.

``p(x, z) = Bern(x; σ(NN_{x|z}(z))) Bern(z; σ(prior_logits))`` and
``q(z | x) = Bern(z; σ(NN_{z|x}(x)))`` with 200 latents.  ``hidden=()`` gives the
"1-layer linear" networks; ``hidden=(200, 200)`` the tanh "nonlinear" ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def _network(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(inputs, outputs))
        if index < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _data_plate(x: torch.Tensor, num_data: int | None) -> pyro.plate:
    """The plate over the images of ``x``; a subsample scaled by ``num_data / len(x)``
    when ``num_data`` is given."""
    if num_data is None:
        return pyro.plate("data", x.shape[0])
    return pyro.plate("data", num_data, subsample=torch.arange(x.shape[0], device=x.device))


class DiscreteVAE(nn.Module):
    """Bernoulli-latent VAE with ``model(x, num_data=None)`` and ``guide(x, num_data=None)``
    for :class:`pyro.infer.SVI`.

    :param latents: number of Bernoulli latents (200 in the paper).
    :param pixels: data dimension (784 for 28x28 images).
    :param hidden: hidden layer sizes of both networks (``()`` = linear).
    """

    def __init__(self, latents: int = 200, pixels: int = 784, hidden: Sequence[int] = ()):
        super().__init__()
        self.latents = latents
        self.encoder = _network([pixels, *hidden, latents])
        self.decoder = _network([latents, *reversed(hidden), pixels])
        self.prior_logits = nn.Parameter(torch.zeros(latents))

    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        pyro.module("vae", self)
        with _data_plate(x, num_data):
            prior = dist.Bernoulli(logits=self.prior_logits).expand([self.latents])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        pyro.module("vae", self)
        with _data_plate(x, num_data):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))
