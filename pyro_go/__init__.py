"""pyro-go: GO gradients (Cong et al., ICLR 2019) for Pyro.

Swap :class:`pyro.infer.Trace_ELBO` for :class:`TraceGO_ELBO` to get unbiased,
low-variance gradients through discrete and non-reparameterisable latent variables.
:class:`TraceRELAX_ELBO` offers RELAX / REBAR (Grathwohl et al. 2018) beside it, and
:class:`TraceRLOO_ELBO` and :class:`TraceDisARM_ELBO` the leave-one-out and antithetic
score-function estimators (Kool et al. 2019; Dong et al. 2020).
"""

from pyro_go._version import __version__
from pyro_go.distributions import get_go_rule, go_surrogate, register_go_rule
from pyro_go.infer import (
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
