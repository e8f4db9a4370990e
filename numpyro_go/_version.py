"""``numpyro_go.__version__``, read from ``pyro_go/_version.py`` (the single source).

Both packages ship in the ``pyro-go`` distribution and sit side by side, in a checkout or
an installation; the file is parsed, not imported, so that ``numpyro_go`` never imports
``pyro_go`` (and with it torch).
"""

import ast
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[1] / "pyro_go" / "_version.py"


def _read_version(path: Path) -> str:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no __version__ assignment in {path}")


__version__ = _read_version(_SOURCE)
