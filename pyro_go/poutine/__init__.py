"""Effect handlers used by the GO estimators."""

from pyro_go.poutine.go_sample_messenger import GOSampleMessenger

__all__ = ["GOSampleMessenger"]
