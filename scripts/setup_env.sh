#!/usr/bin/env bash
# Creates .venv in the repository root (if missing) and installs pyro-go with its test
# dependencies. torch==2.13.0 is installed first: it is the CPU wheel available offline,
# whereas an unpinned torch would pull a multi-GB CUDA build.
# Usage: source scripts/setup_env.sh   (PYRO_GO_EXTRAS=tutorials,numpyro adds extras)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip_install() {
    # pip's exit status survives the filter (pipefail); the filter drops the noise of
    # this machine's offline package index
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
}
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (CPU)"
    pip_install torch==2.13.0
fi
EXTRAS="pyro,dev${PYRO_GO_EXTRAS:+,$PYRO_GO_EXTRAS}"
echo "[setup] installing pyro-go[$EXTRAS]"
pip_install -e "$ROOT[$EXTRAS]"
"$VENV/bin/python" -c "import torch, pyro, pyro_go; print('[setup] torch', torch.__version__, '| pyro', pyro.__version__, '| pyro_go', pyro_go.__version__)"
export PATH="$VENV/bin:$PATH"
