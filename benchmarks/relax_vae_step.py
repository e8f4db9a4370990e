"""Time per SVI step and encoder-gradient variance of RELAX / REBAR vs GO on the
200-Bernoulli-latent VAE.

Model (GO paper appendix I, "1-layer linear"; ``pyro_go.contrib.DiscreteVAE``):
``z ~ Bern(σ(0))^200``, ``x ~ Bern(σ(W_p z + b_p))``; guide ``z ~ Bern(σ(W_q x + b_q))``;
dynamically binarised MNIST (the bundled subset unless ``--data``), batch 50, Adam 1e-3.
Estimators:

* ``pyro_go.TraceGO_ELBO()`` (default settings),
* ``TraceRELAX_ELBO(RELAX(rebar=True))``: the RELAX paper's "relaxed REBAR", its choice
  for VAEs (``c(ζ) = η f(σ_λ(ζ)) + r_ψ(ζ)``),
* ``TraceRELAX_ELBO(REBAR())`` (``c(ζ) = η f(σ_λ(ζ))``),
* ``TraceRELAX_ELBO(RELAX())`` (``c(ζ) = r_ψ(ζ)``, ``f`` never evaluated at relaxed
  values),
* ``pyro.infer.TraceGraph_ELBO()``: the score function, Rao-Blackwellised over the data
  plate, no baseline, as a reference.

Each RELAX variant runs with the networks named by ``--networks``: ``default`` is the
library's ``r_ψ`` (per image, the 200 relaxed latents → 10 tanh → 1); ``reference`` is
the reference implementation's network, :class:`ReferenceNetwork`: two 200-unit ReLU
layers on ``[x − x̄, ζ]`` with ``x̄`` the training set's mean pixel intensity (it gets the
guide's argument ``x``).  Control-variate parameters are stepped by SVI's optimizer.

1. **Time per step**: median wall time of ``svi.step`` over ``--steps`` steps after 3
   warm-up steps, estimators alternating step by step on fresh batches (one shared VAE;
   each estimator's sites are renamed with ``pyro.contrib.autoname.scope`` so that the
   control-variate parameters of different estimators do not collide in the param
   store), one torch thread unless ``--threads``.
2. **Gradient variance**: a fresh VAE is trained with ``TraceGO_ELBO`` for
   ``--train-steps`` steps and then frozen; on one fixed batch, ``--variance-samples``
   single-sample gradients of the loss w.r.t. the encoder's weight and bias are drawn per
   estimator, and the mean over encoder coordinates of their per-coordinate variance is
   reported.  RELAX variants are measured twice: with the control variate at
   initialisation (not RELAX's operating point), and after training *only* the control
   variate for ``--cv-train-steps`` SVI steps on fresh batches at the frozen VAE, with
   ``Adam(lr=--cv-lr, betas=(0.9, 0.99999))`` (the reference code's control-variate
   optimiser, 10× the model's rate).  The RELAX rows also give the mean of
   ``elbo.last_variance["z"]``, the ``Σ ĝ²`` on the logits that the control variate
   minimises.

The GO paper (Table 4, GPU) reports 0.25 s (GO) vs 0.94 s (REBAR) per 100 iterations.

Run: ``python benchmarks/relax_vae_step.py [--data PATH] [--steps 30] [--quick]``;
writes ``benchmarks/results/relax_vae_step.md`` (not with ``--quick`` unless
``--output``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.contrib.autoname import scope
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.infer.elbo import ELBO
from torch import nn
from tqdm import tqdm
from wallclock import median_step_ms

from pyro_go import REBAR, RELAX, TraceGO_ELBO, TraceRELAX_ELBO
from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist

RESULTS = Path(__file__).parent / "results"
LATENTS, PIXELS = 200, 784
GO = "TraceGO_ELBO"


class ReferenceNetwork(nn.Module):
    """``r_ψ(ζ, x)``: two 200-unit ReLU layers on ``[x − x̄, ζ]`` (the RELAX reference
    code's VAE control variate).  Called by ``RELAX`` as ``network(features, x)`` with
    ``features`` the relaxed latents ``[batch, 200]`` and ``x`` the guide's argument."""

    def __init__(self, data_mean: torch.Tensor, hidden: int = 200) -> None:
        super().__init__()
        self.register_buffer("data_mean", data_mean)
        self.layers = nn.Sequential(
            nn.Linear(PIXELS + LATENTS, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([x - self.data_mean, features], -1)).squeeze(-1)


@dataclass
class Estimator:
    name: str
    make_elbo: Callable[[], ELBO]
    relax: bool = False  # has a trainable control variate


def estimators(networks: list[str], data_mean: torch.Tensor) -> list[Estimator]:
    def network(kind: str) -> nn.Module | None:
        return ReferenceNetwork(data_mean) if kind == "reference" else None

    rows = [Estimator(GO, TraceGO_ELBO)]
    for kind in networks:
        suffix = "" if kind == "default" else ", network=ReferenceNetwork"
        rows.append(
            Estimator(
                f"TraceRELAX_ELBO(RELAX(rebar=True{suffix}))",
                lambda kind=kind: TraceRELAX_ELBO(RELAX(network(kind), rebar=True)),
                relax=True,
            )
        )
    rows.append(Estimator("TraceRELAX_ELBO(REBAR())", lambda: TraceRELAX_ELBO(REBAR()), True))
    for kind in networks:
        name = "RELAX()" if kind == "default" else "RELAX(network=ReferenceNetwork)"
        rows.append(
            Estimator(
                f"TraceRELAX_ELBO({name})",
                lambda kind=kind: TraceRELAX_ELBO(RELAX(network(kind))),
                relax=True,
            )
        )
    rows.append(Estimator("TraceGraph_ELBO (score function)", TraceGraph_ELBO))
    return rows


def scoped(vae: DiscreteVAE, prefix: str) -> tuple[Callable, Callable]:
    """The VAE's model and guide with sites renamed ``prefix/…`` (separate control-variate
    parameters per estimator; the VAE's own parameters stay shared)."""
    return scope(vae.model, prefix=prefix), scope(vae.guide, prefix=prefix)


def surrogate_loss(elbo: ELBO, model, guide, x: torch.Tensor) -> torch.Tensor:
    if isinstance(elbo, TraceGraph_ELBO):  # exposes its surrogate only here
        return elbo._loss_and_surrogate_loss(model, guide, (x,), {})[1]
    return elbo.differentiable_loss(model, guide, x)


def time_steps(rows: list[Estimator], vae, batches: Iterator, steps: int) -> dict[str, float]:
    """Median wall time per ``svi.step`` (ms), estimators alternating step by step."""
    pyro.clear_param_store()
    runners = {}
    for index, row in enumerate(rows):
        model, guide = scoped(vae, f"e{index}")
        runners[row.name] = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), row.make_elbo()).step
    return median_step_ms(runners, batches, steps)


def gradient_variance(
    vae, elbo: ELBO, model, guide, x: torch.Tensor, samples: int, seed: int
) -> tuple[float, float | None]:
    """Mean over encoder coordinates of the variance of single-sample gradients, and the
    mean of ``elbo.last_variance`` (Σĝ² on the logits) for TraceRELAX_ELBO."""
    params = list(vae.encoder.parameters())
    rows, logit_variance = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(samples):
            loss = surrogate_loss(elbo, model, guide, x)
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
            if isinstance(elbo, TraceRELAX_ELBO):
                logit_variance.append(sum(elbo.last_variance.values()))
    variance = torch.stack(rows).var(0).mean().item()
    return variance, (statistics.fmean(logit_variance) if logit_variance else None)


def train_control_variate(
    vae, elbo: ELBO, model, guide, batches: Iterator, steps: int, lr: float
) -> None:
    """SVI steps that move only the control-variate parameters (the VAE's get lr 0)."""
    cv_args = {"lr": lr, "betas": (0.9, 0.99999)}

    def per_param(name: str) -> dict:
        return cv_args if ".relax_" in name else {"lr": 0.0}

    before = [p.detach().clone() for p in vae.parameters()]
    svi = SVI(model, guide, pyro.optim.Adam(per_param), elbo)
    for _ in range(steps):
        svi.step(next(batches))
    for old, new in zip(before, vae.parameters(), strict=True):
        assert torch.equal(old, new.detach()), "the VAE moved while training the control variate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="mnist.npz (default: bundled subset)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per estimator")
    parser.add_argument("--variance-samples", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=200, help="GO steps before variance")
    parser.add_argument("--cv-train-steps", type=int, default=200)
    parser.add_argument("--cv-lr", type=float, default=1e-2)
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=["default", "reference"],
        default=["default", "reference"],
        help="r_ψ of the RELAX variants",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of everything")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.variance_samples, args.train_steps, args.cv_train_steps = 3, 5, 5, 5
    output = args.output or (None if args.quick else RESULTS / "relax_vae_step.md")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pyro.enable_validation(False)
    start = time.perf_counter()
    images = load_mnist(args.data)["x_train"]
    data_mean = torch.from_numpy((images / 255.0).mean(0).astype(np.float32))
    rng = np.random.default_rng(args.seed)

    def batch_stream() -> Iterator[torch.Tensor]:
        while True:
            rows = rng.integers(0, images.shape[0], args.batch_size)
            yield torch.from_numpy(dynamic_binarize(images[rows], rng))

    batches = batch_stream()
    rows = estimators(args.networks, data_mean)
    times = time_steps(rows, DiscreteVAE(), batches, args.steps)
    lines = [
        f"200-Bernoulli linear VAE, batch {args.batch_size}, "
        f"{'bundled MNIST subset' if args.data is None else args.data}, "
        f"torch threads {torch.get_num_threads()}. Median time per `svi.step` over "
        f"{args.steps} steps after 3 warm-up steps, estimators alternating.",
        "",
        "| estimator | median ms per step | vs TraceGO_ELBO |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ms:.1f} | {ms / times[GO]:.2f}x |" for name, ms in times.items()]
    print("\n".join(lines))

    pyro.clear_param_store()
    vae = DiscreteVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGO_ELBO())
    for _ in range(args.train_steps):
        svi.step(next(batches))
    x = next(batches)
    table = [
        "",
        f"Encoder-gradient variance (weight and bias; mean over coordinates of the variance "
        f"of {args.variance_samples} single-sample gradients, one fixed batch) after "
        f"{args.train_steps} TraceGO_ELBO training steps, VAE frozen. 'trained': only the "
        f"control variate trained for {args.cv_train_steps} SVI steps on fresh batches, "
        f"Adam(lr={args.cv_lr:g}, betas=(0.9, 0.99999)). Σĝ² on logits: mean of "
        "`elbo.last_variance['z']` over the draws (the objective the control variate "
        "minimises).",
        "",
        "| estimator | control variate | encoder-gradient variance per coordinate | "
        "vs TraceGO_ELBO | Σĝ² on logits | variance × ms per step |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(table))
    go_variance = None
    for index, row in enumerate(tqdm(rows, desc="variance", disable=not sys.stderr.isatty())):
        model, guide = scoped(vae, f"v{index}")
        elbo = row.make_elbo()
        states = [("at initialisation" if row.relax else "—", None)]
        if row.relax:
            states.append((f"trained {args.cv_train_steps} steps", args.cv_train_steps))
        for state, cv_steps in states:
            if cv_steps:
                train_control_variate(vae, elbo, model, guide, batches, cv_steps, args.cv_lr)
            variance, logit_variance = gradient_variance(
                vae, elbo, model, guide, x, args.variance_samples, args.seed + 1
            )
            if row.name == GO:
                go_variance = variance
            logits = "" if logit_variance is None else f"{logit_variance:.3e}"
            table.append(
                f"| {row.name} | {state} | {variance:.3e} | {variance / go_variance:.3g}x | "
                f"{logits} | {variance * times[row.name]:.3e} |"
            )
            print(table[-1])
    lines += table
    lines += ["", f"Wall time: {time.perf_counter() - start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(lines[-1])
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
