"""Inference: ELBOs with GO gradients."""

from pyro_go.infer.trace_go_elbo import TraceGO_ELBO

__all__ = ["TraceGO_ELBO"]
