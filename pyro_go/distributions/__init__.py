"""GO gradient rules for Pyro distributions, their registry, and GO-enabled
distribution classes."""

from pyro_go.distributions.registry import get_go_rule, register_go_rule, unwrap_distribution

__all__ = ["get_go_rule", "register_go_rule", "unwrap_distribution"]
