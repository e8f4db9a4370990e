"""Screenshots of built documentation pages with headless Chromium.

Usage: ``python scripts/screenshot_docs.py [--html docs/_build/html] [--out DIR]
[PAGE ...]``, after ``bash scripts/docs.sh``.  Each page (a path under the HTML folder;
by default the index and one tutorial) becomes ``DIR/<page with / as _>.png``, and the
script prints the paths.  Chromium comes from the distribution's packages
(``apt-get install -y chromium`` on Debian).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = ("index.html", "tutorials/01_swap_the_elbo.html")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first headless-capable Chromium on ``PATH``, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def screenshot(browser: str, page: Path, out: Path, size: tuple[int, int]) -> Path:
    """Renders ``page`` (an HTML file) at ``size`` pixels into the PNG ``out``."""
    if not page.is_file():
        raise FileNotFoundError(f"no page {page}; build the docs first (bash scripts/docs.sh)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # runs as root in containers and CI
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={out}",
            page.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not out.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot of {page}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", default=list(DEFAULT_PAGES))
    parser.add_argument("--html", type=Path, default=ROOT / "docs" / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no chromium on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 1
    for page in args.pages:
        out = args.out / (page.removesuffix(".html").replace("/", "_") + ".png")
        print(screenshot(browser, args.html / page, out, (args.width, args.height)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
