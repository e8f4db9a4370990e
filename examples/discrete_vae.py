"""Train the GO paper's 200-Bernoulli-latent VAE on dynamically binarised MNIST.

This is ordinary Pyro SVI code; the only GO-specific line is ``loss=TraceGO_ELBO()``.
``--estimator trace`` or ``tracegraph`` swaps in Pyro's score-function ELBOs for
comparison; ``--compile-likelihood`` compiles GO's flipped likelihood (worth it for long
runs: the first steps take a few seconds more).  Data: ``--data path/to/mnist.npz`` (or
$PYRO_GO_DATA), else the small subset bundled with pyro-go.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from tqdm import tqdm

from pyro_go import TraceGO_ELBO
from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches

ESTIMATORS = {"go": TraceGO_ELBO, "trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO}


def evaluate(vae: DiscreteVAE, images: np.ndarray, rng, batch_size: int = 200) -> float:
    """ELBO per image on a dynamically binarised split (one sample per image)."""
    elbo = Trace_ELBO()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(dynamic_binarize(images[start : start + batch_size], rng))
            total -= elbo.loss(vae.model, vae.guide, x)
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_GO_DATA"))
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="go")
    parser.add_argument("--hidden", type=int, default=0, help="0: linear; 200: 200-200 tanh")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile-likelihood",
        action="store_true",
        help="TraceGO_ELBO(compile_likelihood=True): one torch.compile kernel per shape",
    )
    args = parser.parse_args()

    pyro.set_rng_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = load_mnist(args.data)
    hidden = (args.hidden, args.hidden) if args.hidden else ()
    vae = DiscreteVAE(hidden=hidden)
    if args.compile_likelihood and args.estimator != "go":
        parser.error("--compile-likelihood applies to --estimator go only")
    options = {"compile_likelihood": True} if args.compile_likelihood else {}
    loss = ESTIMATORS[args.estimator](**options)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), loss)
    print(
        f"discrete VAE: 200 Bernoulli latents, {'linear' if not hidden else 'nonlinear'} nets, "
        f"{len(data['x_train'])} training images, estimator={args.estimator}"
    )
    print(f"{'step':>6} {'train ELBO':>11} {'seconds':>8}")
    batches = minibatches(data["x_train"], args.batch_size, rng)
    running, start = None, time.perf_counter()
    steps = range(1, args.steps + 1)
    for step in tqdm(steps, disable=not sys.stdout.isatty(), leave=False):
        x = torch.from_numpy(dynamic_binarize(next(batches), rng))
        elbo = -svi.step(x) / args.batch_size
        running = elbo if running is None else 0.95 * running + 0.05 * elbo
        if step % args.log_every == 0 or step == args.steps:
            message = f"{step:>6} {running:>11.2f} {time.perf_counter() - start:>8.1f}"
            tqdm.write(message) if sys.stdout.isatty() else print(message, flush=True)
    elapsed = time.perf_counter() - start
    valid = evaluate(vae, data["x_valid"], rng)
    print(f"validation ELBO per image: {valid:.2f}  ({1e3 * elapsed / args.steps:.1f} ms/step)")


if __name__ == "__main__":
    main()
