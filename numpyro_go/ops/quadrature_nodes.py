"""The quadrature rules behind the negative-binomial variable-nabla, from
``pyro_go/ops/quadrature_nodes.py`` (the single source, which derives them).

Both packages ship in the ``pyro-go`` distribution and sit side by side; that module uses
numpy alone and is loaded from its file, not imported, so that ``numpyro_go`` never
imports ``pyro_go`` (and with it torch).
"""

import importlib.util
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[2] / "pyro_go" / "ops" / "quadrature_nodes.py"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("numpyro_go.ops._quadrature_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RULES = _load(_SOURCE)

EXACT_HEAD_COUNTS: int = _RULES.EXACT_HEAD_COUNTS
EXP_EXP = _RULES.EXP_EXP
TANH_SINH = _RULES.TANH_SINH
digamma_difference_series = _RULES.digamma_difference_series
