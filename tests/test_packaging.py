"""Packaging: one version everywhere, and the files a release needs."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_version() -> str:
    tree = ast.parse((ROOT / "pyro_go" / "_version.py").read_text())
    (assign,) = [node for node in tree.body if isinstance(node, ast.Assign)]
    return ast.literal_eval(assign.value)


def test_version_is_single_sourced():
    version = _source_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", version)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'attr = "pyro_go._version.__version__"' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE)
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", citation, re.MULTILINE)


def test_numpyro_go_version_without_importing_pyro_go():
    # numpyro_go reads the file; it must not import pyro_go (and so torch)
    from numpyro_go._version import __version__

    assert __version__ == _source_version()
    source = (ROOT / "numpyro_go" / "_version.py").read_text()
    assert "import pyro_go" not in source and "from pyro_go" not in source


def test_pyro_go_version():
    import pyro_go

    assert pyro_go.__version__ == _source_version()


def test_release_files_exist():
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md", "pyro_go/data/README.md"):
        assert (ROOT / name).is_file(), name
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "Attribution and licences" in (ROOT / "pyro_go" / "data" / "README.md").read_text()
