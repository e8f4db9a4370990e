#!/usr/bin/env bash
# Sets up a fresh machine (see setup_env.sh) and runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long
# statistical tests, or `bash scripts/test.sh tests/pyro/test_unbiased.py`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# tests/test_tutorials.py executes tutorials/*.ipynb and needs the tutorials extra
export PYRO_GO_EXTRAS="${PYRO_GO_EXTRAS:-tutorials}"
source scripts/setup_env.sh
exec python -m pytest -n 2 "$@"
