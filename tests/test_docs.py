"""The documentation: the API pages cover every public name, and the built pages render.

The site itself is built by ``bash scripts/docs.sh`` (CI runs it, warnings as errors);
the screenshot test runs when that build and a Chromium are present and skips otherwise.
"""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "docs" / "_build" / "html"
API = ROOT / "docs" / "api"

# every module whose public names the API reference must show
PUBLIC = {
    "pyro_go": [
        "pyro_go.infer",
        "pyro_go.distributions",
        "pyro_go.distributions.rules",
        "pyro_go.poutine",
        "pyro_go.datasets",
        "pyro_go.contrib",
    ],
    "numpyro_go": [
        "numpyro_go.infer",
        "numpyro_go.distributions",
        "numpyro_go.distributions.rules",
        "numpyro_go.nn",
        "numpyro_go.contrib",
    ],
}


def _automodules(page: Path) -> set[str]:
    return set(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), re.MULTILINE))


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_api_reference_covers_every_public_name(package):
    documented = _automodules(API / f"{package}.rst")
    assert set(PUBLIC[package]) <= documented
    if package == "numpyro_go":
        pytest.importorskip("numpyro")
    # the top-level package only re-exports names of the documented modules
    top = importlib.import_module(package)
    names_in_modules = set()
    for module in PUBLIC[package]:
        names_in_modules |= set(getattr(importlib.import_module(module), "__all__", ()))
    assert set(top.__all__) - {"__version__"} <= names_in_modules


def test_every_page_is_in_a_toctree():
    pages = {p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in _doc_sources()}
    listed = set()
    for source in _doc_sources():
        text = source.read_text()
        for block in re.findall(r"```\{toctree\}(.*?)```", text, re.DOTALL):
            for line in block.splitlines():
                line = line.strip()
                if line and not line.startswith((":", "<!--")):
                    base = source.parent.relative_to(ROOT / "docs")
                    listed.add((base / line).as_posix().removeprefix("./"))
    assert pages - {"index"} <= listed | {"scaling"}, pages - listed


def _doc_sources() -> list[Path]:
    docs = ROOT / "docs"
    skip = ("_build", "tutorials")
    return [
        p
        for p in list(docs.rglob("*.md")) + list(docs.rglob("*.rst"))
        if p.relative_to(docs).parts[0] not in skip
    ]


def _screenshot_script():
    spec = importlib.util.spec_from_file_location(
        "screenshot_docs", ROOT / "scripts" / "screenshot_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_built_pages_render_in_chromium(tmp_path):
    script = _screenshot_script()
    if script.find_browser() is None:
        pytest.skip("no chromium (apt-get install -y chromium)")
    if not (HTML / "index.html").is_file():
        pytest.skip("docs not built (bash scripts/docs.sh)")
    plt = pytest.importorskip("matplotlib.pyplot")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_docs.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    shots = [Path(line) for line in out.stdout.split()]
    assert [p.name for p in shots] == ["index.png", "tutorials_01_swap_the_elbo.png"]
    for shot in shots:
        image = plt.imread(shot)
        assert image.shape[:2] == (1600, 1280)
        # a rendered page: the theme's sidebar and text, not a blank or error page
        assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 50


def test_package_and_docs_cite_nothing_outside_the_repository():
    # the design notes and papers the project was built from are not shipped
    roots = ["pyro_go", "numpyro_go", "docs", "tutorials", "README.md"]
    files = [ROOT / "README.md"] + [
        p
        for root in roots[:-1]
        for p in (ROOT / root).rglob("*")
        if p.suffix in (".py", ".md", ".rst", ".ipynb") and "_build" not in p.parts
    ]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for needle in ("DESIGN.md", "/work/shared", "seeds/"):
            assert needle not in text, f"{path.relative_to(ROOT)} cites {needle}"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_quick_start_examples_run(backend):
    """The quick start's two complete examples run (with fewer steps)."""
    if backend == "numpyro":
        pytest.importorskip("numpyro")
    blocks = _python_blocks(ROOT / "docs" / "quickstart.md")
    (code,) = [b for b in blocks if f"from {backend}_go import TraceGO_ELBO" in b]
    assert "1000" in code
    exec(compile(code.replace("1000", "20"), f"quickstart[{backend}]", "exec"), {})


def test_go_surrogate_example_runs():
    blocks = _python_blocks(ROOT / "docs" / "quickstart.md")
    (code,) = [b for b in blocks if "go_surrogate(dist.Poisson" in b]
    namespace = {}
    exec(compile(code, "quickstart[go_surrogate]", "exec"), namespace)
    assert namespace["logits"].grad is not None
