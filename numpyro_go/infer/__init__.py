"""Inference for NumPyro: the GO ELBO; the RELAX / REBAR, RLOO and DisARM ELBOs; and SVI
steps that stop at a non-finite loss."""

from numpyro_go.infer.checked_svi import (
    NonFiniteLossError,
    non_finite_sites,
    run_checked,
    update_checked,
)
from numpyro_go.infer.control_variates import REBAR, RELAX, Baseline, ControlVariate
from numpyro_go.infer.trace_disarm_elbo import TraceDisARM_ELBO
from numpyro_go.infer.trace_go_elbo import TraceGO_ELBO
from numpyro_go.infer.trace_relax_elbo import TraceRELAX_ELBO
from numpyro_go.infer.trace_rloo_elbo import TraceRLOO_ELBO

__all__ = [
    "REBAR",
    "RELAX",
    "Baseline",
    "ControlVariate",
    "NonFiniteLossError",
    "TraceDisARM_ELBO",
    "TraceGO_ELBO",
    "TraceRELAX_ELBO",
    "TraceRLOO_ELBO",
    "non_finite_sites",
    "run_checked",
    "update_checked",
]
