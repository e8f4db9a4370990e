"""Special functions behind NumPyro's variable-nablas."""
