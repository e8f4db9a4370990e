"""Ready-made NumPyro models and guides from the GO paper."""

from numpyro_go.contrib.discrete_vae import DiscreteVAE

__all__ = ["DiscreteVAE"]
