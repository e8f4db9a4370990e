"""Inference: the GO ELBO for NumPyro."""

from numpyro_go.infer.trace_go_elbo import TraceGO_ELBO

__all__ = ["TraceGO_ELBO"]
