"""ELBO against wall-clock time for HVI in the GO paper's 128-64 Poisson–Gamma DEF
(section 7.4, Figure 5, appendix K), GO vs the score function, equal budgets.

Data: MNIST pixel intensities as counts, ``round(10 · intensity)`` (as the GO authors'
code), minibatches of 200, the 50k training split (``--data path/to/mnist.npz``; the
bundled 1000-image subset otherwise).  Model and guide: ``pyro_go.contrib.PoissonGammaDEF``
(Gamma inference networks for ``z⁽¹⁾ | x`` and ``z⁽²⁾ | z⁽¹⁾``, Gamma ``q(W)``).
Estimators, each trained for ``--budget`` seconds from the same initialisation:

* ``TraceGO_ELBO``: GO for the Gamma sites (implicit reparameterisation with
  statistical back-propagation through the chain, sticking);
* ``TraceGraph_ELBO`` with the guide's samples detached (``reparameterized=False``):
  the score-function estimator, Rao-Blackwellised over the data plate, with
  decaying-average baselines on the local sites;
* ``Trace_ELBO``: Pyro's pathwise gradient without sticking (for reference: every
  method in the paper's Figure 5 uses sticking).

The ELBO per image (training objective: local terms on a fixed subset of training
images scaled to the full set, global terms once, divided by the number of training
images) is estimated off the clock every ``--eval-every`` seconds.

Run: ``python benchmarks/def_wallclock.py --data path/to/mnist.npz --budget 120``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from wallclock import RESULTS, Curve, cpu_name, plot_curves, train_for_budget

from pyro_go import TraceGO_ELBO
from pyro_go.contrib import PoissonGammaDEF, pixel_counts
from pyro_go.datasets import load_mnist, minibatches

ESTIMATORS = {  # name: (ELBO class, reparameterized guide)
    "TraceGO_ELBO": (TraceGO_ELBO, True),
    "TraceGraph_ELBO (score function)": (TraceGraph_ELBO, False),
    "Trace_ELBO (pathwise, no sticking)": (Trace_ELBO, True),
}


def elbo_per_image(module: PoissonGammaDEF, x: torch.Tensor, num_data: int) -> float:
    """One-sample estimate of the training objective's ELBO per training image."""
    with torch.no_grad():
        return -Trace_ELBO().loss(module.model, module.guide, x, num_data=num_data) / num_data


def run(name: str, counts: np.ndarray, evaluation: torch.Tensor, args) -> Curve:
    elbo_class, reparameterized = ESTIMATORS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    module = PoissonGammaDEF(layers=args.layers, reparameterized=reparameterized)
    optimizer = pyro.optim.Adam(module.optim_args(args.local_lr, args.global_lr))
    svi = SVI(module.model, module.guide, optimizer, elbo_class())
    batches = (torch.from_numpy(x) for x in minibatches(counts, args.batch_size, rng))

    def step(x: torch.Tensor) -> None:
        svi.step(x, num_data=len(counts))

    def evaluate() -> dict[str, float]:
        return {"train": elbo_per_image(module, evaluation, len(counts))}

    return train_for_budget(name, step, batches, args.budget, evaluate, args.eval_every)


def table(curves: list[Curve], budget: float) -> list[str]:
    marks = [budget / 4, budget / 2]
    head = " | ".join(f"ELBO at {mark:.0f} s" for mark in marks)
    lines = [
        f"| estimator | steps | ms per step | {head} | ELBO at the end ({budget:.0f} s) |",
        "|---|---|---|" + "---|" * (len(marks) + 1),
    ]
    for curve in curves:
        values = " | ".join(f"{curve.value_at(mark, 'train'):.2f}" for mark in marks)
        final = curve.values[-1]["train"]
        lines.append(
            f"| {curve.name} | {curve.steps[-1]} | {curve.ms_per_step:.1f} | {values} | "
            f"{final:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="mnist.npz (default: bundled subset)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per estimator")
    parser.add_argument("--layers", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--local-lr", type=float, default=1e-3)
    parser.add_argument("--global-lr", type=float, default=1e-2)
    parser.add_argument("--eval-every", type=float, default=10.0)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 s per estimator, nothing saved")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.eval_every = 3.0, 1.0
    pyro.enable_validation(False)
    counts = pixel_counts(load_mnist(args.data)["x_train"])
    evaluation = torch.from_numpy(counts[: args.eval_images])
    print(
        f"DEF {'-'.join(map(str, args.layers))} on {len(counts)} MNIST count images, batch "
        f"{args.batch_size}, {args.budget:.0f} s per estimator, torch threads "
        f"{torch.get_num_threads()} of {cpu_name()}"
    )
    start = time.perf_counter()
    curves = [run(name, counts, evaluation, args) for name in ESTIMATORS]
    lines = [
        f"DEF {'-'.join(map(str, args.layers))}, {len(counts)} training images as counts "
        f"round(10 x intensity), batch {args.batch_size}, Adam (inference nets "
        f"{args.local_lr:g}, q(W) {args.global_lr:g}), {args.budget:.0f} s of training "
        f"per estimator. ELBO per training image (one-sample estimate on "
        f"{len(evaluation)} training images, scaled to the full set), off the clock.",
        "",
        *table(curves, args.budget),
        "",
        f"Wall time: {time.perf_counter() - start:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if not args.quick:
        (RESULTS / "def_wallclock.md").parent.mkdir(exist_ok=True)
        (RESULTS / "def_wallclock.md").write_text(text)
        title = f"DEF {'-'.join(map(str, args.layers))} on MNIST counts: ELBO vs wall clock"
        plot_curves(curves, {"train": "-"}, title, RESULTS / "def_wallclock.png", log_scale=True)


if __name__ == "__main__":
    main()
