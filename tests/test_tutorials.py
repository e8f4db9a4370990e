"""Every notebook in tutorials/ runs end to end in smoke mode (``PYRO_GO_SMOKE=1``).

The notebooks are committed with the outputs of a full run (``bash
scripts/run_tutorials.sh``), which the docs render; this test executes a copy with the
outputs cleared, and checks that the stored outputs stay small (PNG figures).

Needs the ``tutorials`` extra (nbclient, nbformat, ipykernel, matplotlib); skipped
without it.  The kernel is this interpreter: a kernelspec written to a temporary
``JUPYTER_PATH`` runs ``sys.executable -m ipykernel_launcher``, whatever kernels the
machine has installed.
"""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
KERNEL = "pyro-go-tests"
MAX_NOTEBOOK_BYTES = 2_000_000


def test_tutorials_exist():
    assert len(TUTORIALS) >= 5, TUTORIALS


@pytest.fixture
def kernel_for_this_python(tmp_path, monkeypatch) -> str:
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv(
        "JUPYTER_PATH", str(tmp_path) + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    )
    monkeypatch.setenv("PYRO_GO_SMOKE", "1")
    # the checkout's pyro_go, installed or not; one intra-op thread per kernel
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return KERNEL


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_stored_outputs_are_small(path):
    notebook = nbformat.read(path, as_version=4)
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: outputs too large"
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            kinds = set(output.get("data", {}))
            assert not kinds & {"image/svg+xml", "application/pdf"}, (
                f"{path.name}: store figures as PNG"
            )


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(path, kernel_for_this_python):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        cell.outputs, cell.execution_count = [], None
    assert any("PYRO_GO_SMOKE" in cell.source for cell in code)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=kernel_for_this_python,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    images = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert images >= 1, f"{path.name} drew no figure"
