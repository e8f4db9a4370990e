"""Runs the notebooks in ``tutorials/`` in full and stores their outputs in place.

Usage: ``python scripts/run_tutorials.py [NAME ...]`` (default: every notebook), or
``bash scripts/run_tutorials.sh``, which sets up the environment first.  Each notebook
runs in a fresh kernel of this interpreter with ``PYRO_GO_SMOKE`` unset; its figures are
stored as PNG.  The script prints each notebook's run time and writes them to
``tutorials/run_times.md``.  Set ``PYRO_GO_MNIST`` / ``PYRO_GO_OMNIGLOT`` to full data
(see :mod:`pyro_go.datasets`) before running; without them the notebooks train on the
bundled subsets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
KERNEL = "pyro-go-run"


def kernel_for_this_python(where: Path) -> str:
    """Writes a kernelspec that runs ``sys.executable`` under ``where`` and returns its name."""
    spec = where / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    os.environ["JUPYTER_PATH"] = str(where) + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    return KERNEL


def run(path: Path, kernel: str, timeout: int) -> float:
    """Executes ``path`` in place; returns the wall-clock seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    strip_widgets(notebook)
    nbformat.write(notebook, path)
    return seconds


WIDGET = "application/vnd.jupyter.widget-view+json"


def strip_widgets(notebook) -> None:
    """Drops progress-bar widgets: without their state (which the docs cannot show) they
    would render as the text of their first frame, ``0%``."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if WIDGET not in out.get("data", {})]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:  # in the order given
        prefixes = [name.removesuffix(".ipynb") for name in args.names]
        paths = [p for prefix in prefixes for p in paths if p.stem.startswith(prefix)]
    os.environ.pop("PYRO_GO_SMOKE", None)
    # the checkout's packages, installed or not
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    # PNG figures (small, and what GitHub and the docs show)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    times = {}
    with tempfile.TemporaryDirectory() as where:
        kernel = kernel_for_this_python(Path(where))
        for path in paths:
            print(f"[run_tutorials] {path.name} ...", flush=True)
            times[path.name] = run(path, kernel, args.timeout)
            print(f"[run_tutorials] {path.name}: {times[path.name]:.0f} s", flush=True)
    _record(times)
    return 0


def _record(times: dict[str, float]) -> None:
    """Updates ``tutorials/run_times.md`` with the notebooks just run."""
    table = TUTORIALS / "run_times.md"
    rows = {}
    if table.exists():
        for line in table.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 3 and cells[0].endswith(".ipynb"):
                rows[cells[0]] = cells[1:]
    when = time.strftime("%Y-%m-%d")
    for name, seconds in times.items():
        rows[name] = [f"{seconds / 60:.1f}", when]
    lines = [
        "# Tutorial run times",
        "",
        "Wall clock of a full run (`bash scripts/run_tutorials.sh`), in minutes, on the",
        f"machine that stored the outputs ({platform.machine()}, {os.cpu_count()} CPUs,",
        "possibly shared with other work).",
        "",
        "| notebook | minutes | date |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {m} | {d} |" for name, (m, d) in sorted(rows.items())]
    table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
