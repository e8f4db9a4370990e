"""Gradient variance on the GO paper's one-dimensional toys (Figure 2, appendix H).

Target posteriors ``NB(r0=10, p0=0.2)``, ``NB(0.5, 0.2)``, ``Gamma(α0=1, β0=0.5)`` and
``Gamma(0.01, 0.5)``; guide of the same family with learnable parameters; objective the
ELBO (= −KL(q‖p) + const).  For each toy and each of two guide settings (a starting point
and one near the target) the script draws N single-sample gradient estimates w.r.t. the
unconstrained guide parameters with

* ``pyro_go.TraceGO_ELBO``,
* ``pyro.infer.Trace_ELBO`` (score function for NB; pathwise without sticking for Gamma),
* ``Trace_ELBO(num_particles=2)`` for NB ("REINFORCE2": as many model evaluations as GO),
* ``pyro.infer.TraceGraph_ELBO`` with a decaying-average baseline (warmed up first),

and prints mean, variance, model evaluations per estimate, and the ratio of the best Pyro
estimator's variance to GO's.  For a single site the GO estimator is unique, so the script
also evaluates it by a direct closed formula on the *same* samples
(``g(y)·[f(y+1) − f(y)]`` for NB, ``dz/dη · ∂_z f`` for Gamma) and reports the largest
per-sample difference: an honest implementation reaches that floor exactly.

Run: ``python benchmarks/variance_toys.py [--samples 3000] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from tqdm import tqdm

from pyro_go import TraceGO_ELBO
from pyro_go.contrib.gradient_toys import TOYS, Toy, exact_kl, set_guide_params
from pyro_go.ops.special import negative_binomial_total_count_nabla

RESULTS = Path(__file__).parent / "results"


def surrogate_loss(elbo, toy: Toy, baseline: bool) -> torch.Tensor:
    """The differentiable surrogate of one estimate (TraceGraph_ELBO exposes it only
    through ``_loss_and_surrogate_loss``)."""

    def guide():
        toy.guide(baseline)

    if isinstance(elbo, TraceGraph_ELBO):
        return elbo._loss_and_surrogate_loss(toy.model, guide, (), {})[1]
    return elbo.differentiable_loss(toy.model, guide)


def draw(elbo, toy: Toy, params, samples: int, seed: int, baseline: bool = False) -> torch.Tensor:
    """``samples`` single-sample gradients of the loss, row ``i`` drawn with seed+i."""
    rows = []
    for index in range(samples):
        pyro.set_rng_seed(seed + index)
        loss = surrogate_loss(elbo, toy, baseline)
        rows.append(torch.stack(torch.autograd.grad(loss, params, allow_unused=True)))
    return torch.stack(rows)


def direct_go(toy: Toy, params, samples: int, seed: int) -> torch.Tensor:
    """The GO estimate from its closed formula, on the samples ``draw`` sees."""
    first, second = (pyro.param(n).detach() for n in toy.param_names())
    target = toy.distribution(*(torch.tensor(v) for v in toy.target))
    guide = toy.distribution(first, second)
    rows = []
    for index in range(samples):
        pyro.set_rng_seed(seed + index)
        if toy.family == "nb":
            y = guide.sample()

            def f(value):
                return target.log_prob(value) - guide.log_prob(value)

            delta = f(y + 1) - f(y)
            g_r = negative_binomial_total_count_nabla(y, first, second)
            g_p = (y + first) / (1 - second)
            # chain rule to unconstrained (log r, logit p); the loss is −ELBO
            rows.append(-delta * torch.stack([g_r * first, g_p * second * (1 - second)]))
        else:
            x = torch._standard_gamma(first)
            z = x / second
            dz_dalpha = torch._standard_gamma_grad(first, x) / second
            dz_dbeta = -x / second**2
            alpha0, beta0 = toy.target
            df_dz = (alpha0 - 1) / z - beta0 - (first - 1) / z + second
            rows.append(-df_dz * torch.stack([dz_dalpha * first, dz_dbeta * second]))
    return torch.stack(rows)


def exact_gradient(toy: Toy, values: tuple[float, float]) -> torch.Tensor:
    """d KL(q‖p) / d(unconstrained guide params), in float64 (:func:`exact_kl`)."""
    first_u = torch.tensor(values[0], dtype=torch.float64).log().requires_grad_()
    second_u = torch.tensor(values[1], dtype=torch.float64)
    second_u = second_u.log() - (-second_u).log1p() if toy.family == "nb" else second_u.log()
    second_u.requires_grad_()
    first = first_u.exp()
    second = torch.sigmoid(second_u) if toy.family == "nb" else second_u.exp()
    kl = exact_kl(toy, first, second)
    return torch.stack(torch.autograd.grad(kl, [first_u, second_u]))


def warm_up_baseline(toy: Toy, steps: int = 300) -> None:
    elbo = TraceGraph_ELBO()
    for _ in range(steps):
        surrogate_loss(elbo, toy, baseline=True)


def estimators(toy: Toy) -> dict[str, tuple[Callable, int, bool]]:
    """name -> (ELBO, model evaluations per estimate, uses baseline)."""
    table = {"TraceGO_ELBO": (TraceGO_ELBO(), 2 if toy.family == "nb" else 1, False)}
    table["Trace_ELBO"] = (Trace_ELBO(), 1, False)
    if toy.family == "nb":
        table["Trace_ELBO x2 particles"] = (Trace_ELBO(num_particles=2), 2, False)
    table["TraceGraph_ELBO + avg baseline"] = (TraceGraph_ELBO(), 1, True)
    return table


def run_toy(toy: Toy, samples: int, seed: int) -> list[str]:
    rows = []
    for setting, values in toy.settings.items():
        params = set_guide_params(toy, values)
        results = {}
        for name, (elbo, evaluations, baseline) in estimators(toy).items():
            if baseline:
                warm_up_baseline(toy)
            grads = draw(elbo, toy, params, samples, seed, baseline)
            results[name] = (grads, evaluations)
        direct = direct_go(toy, params, samples, seed)
        exact = exact_gradient(toy, values)
        go = results["TraceGO_ELBO"][0]
        mismatch = (go - direct).abs().max().item()
        names = ["log r", "logit p"] if toy.family == "nb" else ["log alpha", "log beta"]
        for index, param in enumerate(names):
            go_var = go[:, index].var().item()
            pyro_vars = {
                name: g[:, index].var().item()
                for name, (g, _) in results.items()
                if name != "TraceGO_ELBO"
            }
            best = min(pyro_vars, key=pyro_vars.get)
            for name, (grads, evaluations) in results.items():
                column = grads[:, index]
                stderr = column.std().item() / math.sqrt(samples)
                ratio = (
                    pyro_vars[best] / go_var
                    if name == "TraceGO_ELBO"
                    else column.var().item() / go_var
                )
                rows.append(
                    f"| {toy.name} | {setting} {values} | {param} | {name} | "
                    f"{column.mean().item():+.4f} ± {stderr:.4f} | {column.var().item():.4g} | "
                    f"{evaluations} | {ratio:.3g}x |"
                )
            rows.append(
                f"| {toy.name} | {setting} {values} | {param} | exact | "
                f"{exact[index].item():+.4f} | 0 | | |"
            )
            rows.append(
                f"| {toy.name} | {setting} {values} | {param} | GO, direct formula | "
                f"{direct[:, index].mean().item():+.4f} | {direct[:, index].var().item():.4g} | "
                f"max abs diff vs TraceGO_ELBO {mismatch:.1e} | |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 samples, nothing saved")
    parser.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="float32 underflows Gamma(0.012) samples (~1/3 below 1e-38) and biases "
        "every estimator on that toy",
    )
    args = parser.parse_args()
    torch.set_default_dtype(getattr(torch, args.dtype))
    samples = 300 if args.quick else args.samples
    pyro.enable_validation(False)
    start = time.perf_counter()
    header = [
        f"Single-sample gradient of the loss w.r.t. unconstrained guide parameters, "
        f"{samples} samples per estimator (same seeds for every estimator), "
        f"{args.dtype}. "
        "The variance column of the TraceGO_ELBO rows gives, in the last column, the "
        "ratio (best Pyro estimator's variance) / (GO's variance); other rows give their "
        "variance / GO's.",
        "",
        "| toy | guide (setting, params) | parameter | estimator | mean ± stderr | variance "
        "| model evals / estimate | variance ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for toy in tqdm(TOYS, desc="toys", disable=not sys.stderr.isatty()):
        rows.extend(run_toy(toy, samples, args.seed))
    text = "\n".join(header + rows) + f"\n\nWall time: {time.perf_counter() - start:.0f} s\n"
    print(text)
    if not args.quick:  # quick runs are smoke tests, not results
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "variance_toys.md").write_text(text)


if __name__ == "__main__":
    main()
