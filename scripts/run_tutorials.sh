#!/usr/bin/env bash
# Sets up a fresh machine (see setup_env.sh) with the tutorials and NumPyro extras and
# runs every notebook in tutorials/ in full, storing its outputs in place (see
# scripts/run_tutorials.py; arguments go to it, e.g. `bash scripts/run_tutorials.sh 01`).
# Full data: set PYRO_GO_MNIST and PYRO_GO_OMNIGLOT first (pyro_go.datasets).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYRO_GO_EXTRAS="${PYRO_GO_EXTRAS:-tutorials,numpyro,data}"
source scripts/setup_env.sh
exec python scripts/run_tutorials.py "$@"
