"""Inference: ELBOs with GO gradients, and RELAX / REBAR for comparison."""

from pyro_go.infer.control_variates import REBAR, RELAX, Baseline, ControlVariate
from pyro_go.infer.trace_go_elbo import TraceGO_ELBO
from pyro_go.infer.trace_relax_elbo import TraceRELAX_ELBO

__all__ = ["REBAR", "RELAX", "Baseline", "ControlVariate", "TraceGO_ELBO", "TraceRELAX_ELBO"]
