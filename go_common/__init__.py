"""Backend-neutral pieces of pyro-go, shared by :mod:`pyro_go` (PyTorch) and
:mod:`numpyro_go` (JAX).

This package imports neither torch nor JAX, so a NumPyro user never imports torch and a
Pyro user never imports JAX: what both backends decide the same way (the order in which
``D_y f`` strategies are tried, option validation, error texts) is written here once.
"""
