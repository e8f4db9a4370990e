#!/usr/bin/env bash
# Sets up a fresh machine (see setup_env.sh) and trains the 200-Bernoulli-latent VAE
# with TraceGO_ELBO, printing the ELBO as it goes. Arguments go to the demo script
# (see `python examples/discrete_vae.py --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
exec python examples/discrete_vae.py "$@"
