"""numpyro-go: the NumPyro (JAX) backend of pyro-go.

Not implemented yet: it will mirror :mod:`pyro_go` module for module
(``numpyro_go.TraceGO_ELBO``, GO rules and distributions).  Importing this package does
not import JAX.
"""
