"""Reusable models and guides for the GO paper's experiments."""

from pyro_go.contrib.deep_exponential_family import DeepLDA, PoissonGammaDEF, pixel_counts
from pyro_go.contrib.discrete_vae import DiscreteVAE

__all__ = ["DeepLDA", "DiscreteVAE", "PoissonGammaDEF", "pixel_counts"]
