"""ELBO against wall-clock time for the GO paper's 200-Bernoulli-latent VAE (section
7.2, appendix I, Figure 9 and Table 4): ``TraceGO_ELBO`` vs ``TraceGraph_ELBO`` with a
learned data-dependent baseline, equal budgets of training time.

Model: ``pyro_go.contrib.DiscreteVAE``, "1-layer linear" (``--hidden 200`` for the
nonlinear 200-200 tanh networks), dynamically binarised MNIST, batch 50, Adam with
learning rate 1e-3.  The score-function competitor attaches a tanh-MLP baseline
``b(x)`` to site ``z`` through ``infer={"baseline": {"nn_baseline": ...}}``
(``pyro_go.contrib.baselines``), trained by ``TraceGraph_ELBO`` on the squared error
to the downstream cost; GO uses no control variate.

Every ``--eval-every`` seconds of training, off the clock, the ELBO per image is
estimated on the *full* training and validation splits (one sample of ``z`` and one
fresh binarisation per image); the test split is evaluated at the end.

Run: ``python benchmarks/vae_wallclock.py --data path/to/mnist.npz --budget 300``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Collection

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from wallclock import RESULTS, Curve, cpu_name, plot_curves, train_for_budget

from pyro_go import TraceGO_ELBO
from pyro_go.contrib import DiscreteVAE
from pyro_go.contrib.baselines import BaselineNetwork, with_nn_baseline
from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches

ESTIMATORS = ("TraceGO_ELBO", "TraceGraph_ELBO + NN baseline")
PAPER = (
    "The paper (Table 1, 1-layer linear MNIST, 10^6 iterations on a Titan Xp GPU) reports "
    "best training ELBOs of -110.21 (GO), -112.16 (REBAR), -112.89 (RELAX) and validation "
    "ELBOs of -114.27, -114.85, -115.36, at 0.25 s (GO) vs 0.94 s (REBAR) per 100 "
    "iterations (Table 4)."
)


def evaluate(vae: DiscreteVAE, images: np.ndarray, rng, batch_size: int = 1000) -> float:
    """ELBO per image on dynamically binarised ``images`` (one sample per image)."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(dynamic_binarize(images[start : start + batch_size], rng))
            total -= Trace_ELBO().loss(vae.model, vae.guide, x)
    return total / len(images)


def run(name: str, data: dict, args, eval_steps: Collection[int]) -> tuple[Curve, float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    rng, eval_rng = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    vae = DiscreteVAE(hidden=(args.hidden, args.hidden) if args.hidden else ())
    if name == "TraceGO_ELBO":
        guide, elbo = vae.guide, TraceGO_ELBO()
    else:
        baseline = BaselineNetwork(784, hidden=(100,), initial=784 * np.log(0.5))
        guide, elbo = with_nn_baseline(vae.guide, {"z"}, baseline), TraceGraph_ELBO()
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": args.lr}), elbo)
    batches = (
        torch.from_numpy(dynamic_binarize(images, rng))
        for images in minibatches(data["x_train"], args.batch_size, rng)
    )

    def evaluate_splits() -> dict[str, float]:
        return {split: evaluate(vae, data[f"x_{split}"], eval_rng) for split in ("train", "valid")}

    curve = train_for_budget(
        name, svi.step, batches, args.budget, evaluate_splits, args.eval_every, eval_steps
    )
    return curve, evaluate(vae, data["x_test"], eval_rng)


def table(curves: list[Curve], tests: list[float]) -> list[str]:
    equal = curves[0].steps[-1]  # the first run's iterations, for an equal-iterations column
    lines = [
        "| estimator | iterations | s per 100 iterations | train ELBO (final / best) "
        f"| validation ELBO (final / best) | test ELBO (final) | train ELBO after {equal} "
        "iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for curve, test in zip(curves, tests, strict=True):
        train = [value["train"] for value in curve.values]
        valid = [value["valid"] for value in curve.values]
        at_equal = curve.value_at_step(equal, "train")
        lines.append(
            f"| {curve.name} | {curve.steps[-1]} | {curve.ms_per_step / 10:.2f} | "
            f"{train[-1]:.2f} / {max(train):.2f} | {valid[-1]:.2f} / {max(valid):.2f} | "
            f"{test:.2f} | {'n/a' if at_equal is None else f'{at_equal:.2f}'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_GO_DATA"), help="mnist.npz")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per estimator")
    parser.add_argument("--hidden", type=int, default=0, help="0: linear; 200: 200-200 tanh")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 s per estimator, nothing saved")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.eval_every = 3.0, 1.0
    pyro.enable_validation(False)
    data = load_mnist(args.data)
    model = f"nonlinear {args.hidden}-{args.hidden}" if args.hidden else "1-layer linear"
    sizes = ", ".join(f"{key[2:]} {len(value)}" for key, value in data.items())
    print(
        f"discrete VAE ({model}), MNIST ({sizes}), batch {args.batch_size}, "
        f"{args.budget:.0f} s per estimator, torch threads {torch.get_num_threads()} "
        f"of {cpu_name()}"
    )
    start = time.perf_counter()
    results = []
    for name in ESTIMATORS:  # later runs are also evaluated at the first run's iterations
        results.append(run(name, data, args, set(results[0][0].steps) if results else set()))
    curves, tests = [curve for curve, _ in results], [test for _, test in results]
    lines = [
        f"Discrete VAE, {model}, 200 Bernoulli latents, dynamically binarised MNIST "
        f"({sizes} images), batch {args.batch_size}, Adam lr {args.lr:g}, "
        f"{args.budget:.0f} s of training per estimator on {cpu_name()} "
        f"({torch.get_num_threads()} torch threads). ELBO per image on the full splits, "
        f"estimated off the clock every {args.eval_every:.0f} s (one sample per image); "
        "best = best of those evaluations.",
        "",
        *table(curves, tests),
        "",
        PAPER,
        "",
        f"Wall time: {time.perf_counter() - start:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if not args.quick:
        suffix = f"_nonlinear{args.hidden}" if args.hidden else ""
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"vae_wallclock{suffix}.md").write_text(text)
        title = f"Discrete VAE ({model}) on MNIST: ELBO vs wall clock"
        keys = {"train": "-", "valid": "--"}
        plot_curves(curves, keys, title, RESULTS / f"vae_wallclock{suffix}.png")


if __name__ == "__main__":
    main()
