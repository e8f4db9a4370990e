"""Reusable models and guides for the GO paper's experiments."""

from pyro_go.contrib.discrete_vae import DiscreteVAE

__all__ = ["DiscreteVAE"]
