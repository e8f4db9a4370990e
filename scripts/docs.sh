#!/usr/bin/env bash
# Sets up a fresh machine (see setup_env.sh) with the docs extra and builds the Sphinx
# site into docs/_build/html, with warnings as errors. The tutorials are rendered from
# the outputs stored in the notebooks (nothing is executed). Extra arguments go to
# sphinx-build, e.g. `bash scripts/docs.sh -E` to rebuild every page.
# Screenshots of the built pages: `python scripts/screenshot_docs.py` (needs chromium).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYRO_GO_EXTRAS="${PYRO_GO_EXTRAS:-tutorials,docs}"
source scripts/setup_env.sh
exec python -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
