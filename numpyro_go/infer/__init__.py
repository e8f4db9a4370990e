"""Inference: the GO ELBO and the RELAX / REBAR ELBO for NumPyro."""

from numpyro_go.infer.control_variates import REBAR, RELAX, Baseline, ControlVariate
from numpyro_go.infer.trace_go_elbo import TraceGO_ELBO
from numpyro_go.infer.trace_relax_elbo import TraceRELAX_ELBO

__all__ = ["REBAR", "RELAX", "Baseline", "ControlVariate", "TraceGO_ELBO", "TraceRELAX_ELBO"]
