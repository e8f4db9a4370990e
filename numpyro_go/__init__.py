"""numpyro-go: GO gradients (Cong et al., ICLR 2019) for NumPyro.

Swap :class:`numpyro.infer.Trace_ELBO` for :class:`TraceGO_ELBO` to get unbiased,
low-variance gradients through discrete and non-reparameterisable latent variables,
``jax.jit``-compiled end to end.  :class:`TraceRELAX_ELBO` offers the RELAX / REBAR
estimators (Grathwohl et al., ICLR 2018; Tucker et al., NeurIPS 2017), and
:class:`TraceRLOO_ELBO` and :class:`TraceDisARM_ELBO` the leave-one-out and antithetic
score-function estimators (Kool et al. 2019; Dong et al., NeurIPS 2020) for comparison.
"""

from numpyro_go._version import __version__
from numpyro_go.distributions import get_go_rule, go_surrogate, register_go_rule
from numpyro_go.infer import (
    REBAR,
    RELAX,
    Baseline,
    ControlVariate,
    TraceDisARM_ELBO,
    TraceGO_ELBO,
    TraceRELAX_ELBO,
    TraceRLOO_ELBO,
)

__all__ = [
    "REBAR",
    "RELAX",
    "Baseline",
    "ControlVariate",
    "TraceDisARM_ELBO",
    "TraceGO_ELBO",
    "TraceRELAX_ELBO",
    "TraceRLOO_ELBO",
    "__version__",
    "get_go_rule",
    "go_surrogate",
    "register_go_rule",
]
