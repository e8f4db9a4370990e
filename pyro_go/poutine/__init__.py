"""Effect handlers used by the GO, RELAX and multi-sample score-function estimators."""

from pyro_go.poutine.go_sample_messenger import GOSampleMessenger
from pyro_go.poutine.relax_sample_messenger import RelaxSampleMessenger
from pyro_go.poutine.score_sample_messenger import ScoreSampleMessenger

__all__ = ["GOSampleMessenger", "RelaxSampleMessenger", "ScoreSampleMessenger"]
