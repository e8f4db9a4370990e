"""Sphinx configuration of the pyro-go documentation (``bash scripts/docs.sh`` builds it).

The notebooks in ``tutorials/`` are rendered from their stored outputs (``myst-nb`` with
execution off): they are copied into ``docs/tutorials/`` (generated, not committed) before
each build, so the repository keeps one copy of each.
"""

import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

from pyro_go._version import __version__  # noqa: E402

project = "pyro-go"
author = "the pyro-go developers"
copyright = "the pyro-go developers"  # noqa: A001
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax in the build: pages render without a network
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs stored in the notebooks
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"

html_theme = "sphinx_rtd_theme"
html_title = f"pyro-go {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False


def _copy_tutorials() -> None:
    """Copies ``tutorials/*.ipynb`` (and the figures they load) into ``docs/tutorials``."""
    target = DOCS / "tutorials"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for path in sorted((ROOT / "tutorials").iterdir()):
        if path.suffix in (".ipynb", ".png"):
            shutil.copy2(path, target / path.name)


_copy_tutorials()


# Pages that other contributions add; the index lists each one only when its file exists
# (a toctree glob that matches nothing is a warning, and the build treats warnings as errors).
OPTIONAL_PAGES = ("scaling",)
OPTIONAL_MARKER = "<!-- optional pages -->\n"


def _list_optional_pages(app, docname: str, source: list[str]) -> None:
    if docname == "index":
        present = [name for name in OPTIONAL_PAGES if (DOCS / f"{name}.md").is_file()]
        source[0] = source[0].replace(OPTIONAL_MARKER, "".join(f"{n}\n" for n in present))


def _reread_index(app, env, added, changed, removed) -> list[str]:
    return ["index"]  # an optional page may have appeared or gone since the last build


_REFERENCE = re.compile(r"^\[\d+\] ")


def _join_references(app, what, name, obj, options, lines: list[str]) -> None:
    """Docstrings list references as ``[1] Authors (year). *Title
    continued.* Venue`` with a hanging indent, which reStructuredText reads as a
    definition list whose term ends mid-title. Un-indenting the continuation lines makes
    each reference one paragraph."""
    in_reference = False
    for i, line in enumerate(lines):
        if _REFERENCE.match(line):
            in_reference = True
        elif in_reference and line.startswith(" ") and line.strip():
            lines[i] = line.strip()
        else:
            in_reference = False


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _join_references)
    app.connect("source-read", _list_optional_pages)
    app.connect("env-get-outdated", _reread_index)
