"""The version of the ``pyro-go`` distribution, which ships ``pyro_go`` and ``numpyro_go``.

The single source of the version: ``pyproject.toml`` reads it (setuptools' dynamic
``attr``), ``pyro_go.__version__`` imports it and ``numpyro_go.__version__`` reads this
file without importing ``pyro_go`` (and so torch).
"""

__version__ = "0.1.0"
