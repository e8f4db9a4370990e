"""Effect handlers used by the GO and RELAX estimators."""

from pyro_go.poutine.go_sample_messenger import GOSampleMessenger
from pyro_go.poutine.relax_sample_messenger import RelaxSampleMessenger

__all__ = ["GOSampleMessenger", "RelaxSampleMessenger"]
