"""The RELAX paper's toy (Grathwohl et al. 2018, section 6.1, Figure 1): minimise
``E_{b~Bern(θ)}[(b − t)²]`` with ``t = 0.499``, one sample per step, with REINFORCE,
REBAR, RELAX and GO.

The optimum is ``θ = 0``, but the expected loss ``t² + θ(1 − 2t)`` barely depends on
``θ``: the exact gradient w.r.t. the logit ``l`` of ``θ`` is
``d/dl E[(b − t)²] = (1 − 2t) θ(1 − θ)`` (5e-4 at ``θ = 0.5``), while a single-sample
score-function estimate has a standard deviation of about 0.12.

**Formulation in Pyro.**  The guide is ``logit_theta = pyro.param(...)``,
``b ~ Bernoulli(logits=logit_theta)``; the cost enters the model as
``pyro.factor("loss", -(b - t)**2)``.  The model's prior for ``b`` is
``Bernoulli(logits=logit_theta.detach())``: the *same* distribution as the guide, read
from the param store with the gradient stopped.  Then, for every sample,
``log p(b) − log q(b) = 0`` exactly (same numbers, same computation), and the ELBO is
``−E[(b − t)²]`` with ``∇_l ELBO = −∇_l E[(b − t)²]``: the stopped prior carries no
gradient, and ``E[∂_l log q(b)] = 0``.  Every estimator here drops the zero-mean direct
term ``∂_l log q(b)`` (Pyro's ``Trace_ELBO`` for non-reparameterised sites, RELAX by its
definition, GO by "sticking the landing"), so each one sees exactly the paper's
``f(b) = (b − t)²`` (for REBAR and RELAX also at relaxed ``b``, where ``log p`` and
``log q`` still cancel).  No estimator is computed outside Pyro's ``SVI``.

Estimators (labels as printed; the exact calls are in the "what ran" column):

* **REINFORCE**: ``pyro.infer.Trace_ELBO()``.  For a non-reparameterised site Pyro's
  estimate is ``f(b) ∂_l log q(b)`` without the ``∂_l log q`` term, i.e. the paper's
  REINFORCE; the correctness check also runs ``TraceRELAX_ELBO(Baseline(...))`` with a
  baseline fixed at 0, the same estimator (same variance).
* **REINFORCE + learned baseline**: ``TraceRELAX_ELBO(Baseline())``, one learned constant.
* **REBAR**: ``TraceRELAX_ELBO(REBAR())``; **RELAX**: ``TraceRELAX_ELBO(RELAX())`` (a
  1 → 10 tanh → 1 network, the paper's toy network); **RELAX + REBAR term**:
  ``TraceRELAX_ELBO(RELAX(rebar=True))``.  Their control-variate parameters are stepped
  by SVI's own ``Adam(lr)``; the rows marked "cv Adam 0.1" give them their own
  optimiser, the reference code's setting: ``TraceRELAX_ELBO(...,
  control_variate_optim=pyro.optim.Adam({"lr": 0.1, "betas": (0.9, 0.99999)}))``.
* **RELAX, reference toy network**: ``TraceRELAX_ELBO(RELAX(network=ReferenceToyNetwork()))``,
  the control variate of the reference PyTorch toy (``duvenaud/relax``,
  ``pytorch_toy.py``): the same 10-unit tanh network, but on ``2 σ(ζ/λ) − 1`` with a
  learned temperature, where the library's default network takes ``ζ`` itself (trained,
  as there, by ``Adam(0.01)``).
* **GO**: ``pyro_go.TraceGO_ELBO()``.  For one Bernoulli site GO's local form is
  ``[f(1) − f(0)] ∂_l θ`` whatever ``b`` was drawn: it *is* the exact gradient, with
  zero variance; the script prints ``max |ĝ − exact|`` over every draw to show it.

Each estimator is trained with ``Adam(lr=0.01)`` on ``logit_theta`` from ``θ = 0.5``
for ``--steps`` steps (10000 by default: after 2000, no estimator but GO has got below
``θ = 0.1``), one sample per step, for ``--seeds`` seeds (same seeds for every
estimator).  On the first seed, every ``--every`` steps, ``--draws`` extra single-sample
gradients of the loss w.r.t. ``logit_theta`` are drawn at the current parameters (forked
RNG, no update) and their variance recorded.

Correctness checks, against the exact gradient ``(1 − 2t) θ(1 − θ)``: (a) ``t = 0.2``,
``θ = 0.5`` (exact gradient 0.15), fresh control variates, ``--check-draws`` draws;
(b) ``t = 0.499`` after training (first seed), trained control variates, at the final
``θ``, ``--check-draws`` draws.  Each estimator's mean must lie within a few standard
errors of the exact value (``z`` column).

Prints both tables in Markdown; writes ``benchmarks/results/relax_toy.md`` and
``relax_toy.png`` (θ against steps; gradient variance against steps, log scale).
float64 throughout, one torch thread.

Run: ``python benchmarks/relax_toy.py [--steps 10000] [--seeds 3] [--quick]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO
from tqdm import tqdm

from pyro_go import REBAR, RELAX, Baseline, TraceGO_ELBO, TraceRELAX_ELBO

RESULTS = Path(__file__).parent / "results"
TARGET = 0.499
PARAM = "logit_theta"


def make_toy(target: float) -> tuple[Callable, Callable]:
    """Model and guide of the toy (see the module docstring for why the model's prior is
    the guide's distribution with the gradient stopped)."""

    def guide() -> None:
        logit = pyro.param(PARAM, lambda: torch.tensor(0.0))
        pyro.sample("b", dist.Bernoulli(logits=logit))

    def model() -> None:
        logit = pyro.param(PARAM, lambda: torch.tensor(0.0)).detach()
        b = pyro.sample("b", dist.Bernoulli(logits=logit))
        pyro.factor("loss", -((b - target) ** 2))

    return model, guide


def exact_gradient(theta: float, target: float) -> float:
    """``d/dl E_{b~Bern(σ(l))}[(b − t)²] = (1 − 2t) θ(1 − θ)``."""
    return (1 - 2 * target) * theta * (1 - theta)


class ReferenceToyNetwork(torch.nn.Module):
    """``r_ψ`` of the reference PyTorch toy (``duvenaud/relax``, ``pytorch_toy.py``): a
    1 → 10 tanh → 1 network on ``2 σ(ζ/λ) − 1``, with a learned ``log λ`` (initially 0.5),
    instead of the library default's network on ``ζ`` itself."""

    def __init__(self, hidden: int = 10) -> None:
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.tensor(0.5))
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        relaxed = torch.sigmoid(features / self.log_temperature.exp())
        return self.layers(2 * relaxed - 1).squeeze(-1)


class ZeroBaseline(torch.nn.Module):
    """A baseline network without parameters that always returns 0: REINFORCE inside
    ``TraceRELAX_ELBO(Baseline(...))``."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.zeros(())


@dataclass
class Estimator:
    name: str
    what: str
    make_elbo: Callable[[], ELBO]
    style: str = "-"
    color: str = "C0"


def estimators(cv_lr: float) -> list[Estimator]:
    cv = f"cv Adam {cv_lr:g}"
    rows = [
        Estimator("REINFORCE", "`pyro.infer.Trace_ELBO()`", Trace_ELBO, color="C0"),
        Estimator(
            "REINFORCE + learned baseline",
            "`TraceRELAX_ELBO(Baseline())`",
            lambda: TraceRELAX_ELBO(Baseline()),
            color="C1",
        ),
        Estimator(
            "REBAR", "`TraceRELAX_ELBO(REBAR())`", lambda: TraceRELAX_ELBO(REBAR()), color="C2"
        ),
        Estimator(
            "RELAX", "`TraceRELAX_ELBO(RELAX())`", lambda: TraceRELAX_ELBO(RELAX()), color="C3"
        ),
        Estimator(
            "RELAX + REBAR term",
            "`TraceRELAX_ELBO(RELAX(rebar=True))`",
            lambda: TraceRELAX_ELBO(RELAX(rebar=True)),
            color="C4",
        ),
        Estimator(
            "RELAX, reference toy network",
            "`TraceRELAX_ELBO(RELAX(network=ReferenceToyNetwork()))`",
            lambda: TraceRELAX_ELBO(RELAX(network=ReferenceToyNetwork())),
            color="C6",
        ),
    ]
    for base, control_variate in zip(
        rows[2:5], (REBAR, RELAX, partial(RELAX, rebar=True)), strict=True
    ):

        def make(control_variate=control_variate) -> ELBO:
            optim = pyro.optim.Adam({"lr": cv_lr, "betas": (0.9, 0.99999)})
            return TraceRELAX_ELBO(control_variate(), control_variate_optim=optim)

        rows.append(
            Estimator(
                f"{base.name}, {cv}",
                f"{base.what[:-2]}, control_variate_optim=Adam({{'lr': {cv_lr:g}, "
                "'betas': (0.9, 0.99999)}))`",
                make,
                style="--",
                color=base.color,
            )
        )
    rows.append(Estimator("GO", "`pyro_go.TraceGO_ELBO()`", TraceGO_ELBO, color="k"))
    return rows


def logit_param() -> torch.Tensor:
    return pyro.param(PARAM).unconstrained()


def theta_now() -> float:
    return torch.sigmoid(pyro.param(PARAM)).item()


def draw_gradients(elbo: ELBO, model, guide, draws: int, seed: int) -> torch.Tensor:
    """``draws`` single-sample gradients of the loss w.r.t. the logit at the current
    parameters; the global RNG and all parameters are left as they were."""
    param = logit_param()
    grads = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(draws):
            loss = elbo.differentiable_loss(model, guide)
            grads.append(torch.autograd.grad(loss, [param])[0].detach())
    return torch.stack(grads)


def max_error(grads: torch.Tensor, exact: float) -> float:
    return (grads - exact).abs().max().item()


def all_exact(grads: torch.Tensor, exact: float) -> bool:
    """Every draw equals the exact gradient up to float64 rounding."""
    return max_error(grads, exact) <= 1e-10 * abs(exact) + 1e-300


@dataclass
class Checkpoint:
    step: int
    theta: float
    grads: torch.Tensor
    target: float

    @property
    def exact(self) -> bool:
        return all_exact(self.grads, exact_gradient(self.theta, self.target))

    @property
    def variance(self) -> float:
        """The sample variance; 0 when every draw is the exact gradient (GO), whose
        sample variance is rounding noise (~1e-39)."""
        return 0.0 if self.exact else self.grads.var().item()


@dataclass
class Run:
    thetas: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def steps_below(self, level: float) -> int | None:
        return next((step for step, theta in enumerate(self.thetas) if theta < level), None)


def train(estimator: Estimator, args, seed: int, measure: bool) -> Run:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, guide = make_toy(args.target)
    elbo = estimator.make_elbo()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), elbo)
    run = Run(thetas=[0.5])
    for step in range(args.steps + 1):
        last = step == args.steps
        if measure and (step % args.every == 0 or last):
            pyro.param(PARAM, lambda: torch.tensor(0.0))  # created here at step 0
            draws = args.check_draws if last else args.draws
            grads = draw_gradients(elbo, model, guide, draws, 10**6 * (seed + 1) + step)
            run.checkpoints.append(Checkpoint(step, theta_now(), grads, args.target))
        if last:
            break
        start = time.perf_counter()
        run.losses.append(svi.step())
        run.seconds.append(time.perf_counter() - start)
        run.thetas.append(theta_now())
    return run


def fresh_check(estimator: Estimator, target: float, draws: int, seed: int) -> torch.Tensor:
    """Gradients at ``θ = 0.5`` with fresh control variates, for cost ``(b − target)²``."""
    pyro.clear_param_store()
    model, guide = make_toy(target)
    pyro.param(PARAM, lambda: torch.tensor(0.0))
    return draw_gradients(estimator.make_elbo(), model, guide, draws, seed)


def check_row(name: str, setting: str, theta: float, target: float, grads: torch.Tensor) -> str:
    exact = exact_gradient(theta, target)
    mean = grads.mean().item()
    stderr = grads.std().item() / math.sqrt(len(grads))
    if all_exact(grads, exact):
        verdict = f"every draw exact: max abs(ĝ − exact) = {max_error(grads, exact):.1e}"
    else:
        verdict = f"z = {(mean - exact) / stderr:+.2f}"
    return (
        f"| {name} | {setting} | {theta:.4f} | {len(grads)} | {mean:+.6f} ± {stderr:.6f} | "
        f"{exact:+.6f} | {grads.var().item():.3e} | {verdict} |"
    )


def describe_variance(run: Run, target: float) -> str:
    """Mean log10 of the variance over the checkpoints; GO's is −∞ (every draw exact).
    A checkpoint where every draw was the same inexact value (θ so close to 0 that all
    200 samples were b = 0) has variance 0 and is left out, and counted."""
    if all(checkpoint.exact for checkpoint in run.checkpoints):
        worst = max(max_error(c.grads, exact_gradient(c.theta, target)) for c in run.checkpoints)
        return f"−∞ (variance 0: every draw = exact gradient ± {worst:.0e})"
    variances = [c.variance for c in run.checkpoints if not c.exact]
    positive = [v for v in variances if v > 0]
    text = f"{statistics.fmean(math.log10(v) for v in positive):+.2f}"
    left_out = len(run.checkpoints) - len(positive)
    if left_out:
        text += f" ({left_out} checkpoints with variance 0 left out)"
    return text


def plot(results: dict[str, tuple[Estimator, list[Run]]], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.0), dpi=90)
    positive = [
        c.variance for _, runs in results.values() for c in runs[0].checkpoints if c.variance > 0
    ]
    floor = 10 ** math.floor(math.log10(min(positive))) / 10 if positive else 1e-12
    for name, (estimator, runs) in results.items():
        color = estimator.color
        for seed, run in enumerate(runs):
            label = name if seed == 0 else None
            width, alpha = (1.4, 1.0) if seed == 0 else (0.7, 0.35)
            axes[0].plot(
                run.thetas, estimator.style, color=color, lw=width, alpha=alpha, label=label
            )
        checkpoints = runs[0].checkpoints
        steps = [c.step for c in checkpoints]
        variances = [c.variance for c in checkpoints]
        if not any(c.exact for c in checkpoints):
            kept = [(s, v) for s, v in zip(steps, variances, strict=True) if v > 0]
            axes[1].semilogy(
                *zip(*kept, strict=True), estimator.style, color=color, lw=1.2, label=name
            )
        else:
            axes[1].semilogy(steps, [floor] * len(steps), ":", color=color, lw=2, label=name)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("θ")
    axes[0].set_ylim(0, 0.75)
    axes[0].set_title(f"θ (first seed bold, {len(runs)} seeds)", fontsize=9)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("Var ĝ (logit θ), log scale")
    axes[1].set_title(
        f"Var ĝ from {args.draws} draws every {args.every} steps (first seed); "
        "GO's 0 drawn at the bottom",
        fontsize=9,
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"min E[(b − {args.target})²], b ~ Bern(θ); Adam {args.lr} on logit θ, one sample per step",
        fontsize=10,
    )
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.81, 1))
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=250, help="steps between variance draws")
    parser.add_argument("--draws", type=int, default=200, help="gradients per variance estimate")
    parser.add_argument("--check-draws", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--cv-lr", type=float, default=0.1, help="for the 'cv Adam' rows")
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--quick", action="store_true", help="300 steps, 1 seed, fewer draws, nothing saved"
    )
    parser.add_argument("--output-dir", type=Path, default=None, help=f"default {RESULTS}")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.every, args.draws, args.check_draws = 300, 1, 50, 50, 300
    output_dir = args.output_dir or (None if args.quick else RESULTS)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    start = time.perf_counter()

    results: dict[str, tuple[Estimator, list[Run]]] = {}
    checks: list[str] = []
    reinforce_check = Estimator(
        "REINFORCE via TraceRELAX_ELBO",
        "",
        lambda: TraceRELAX_ELBO(Baseline(network=ZeroBaseline())),
    )
    for estimator in tqdm(estimators(args.cv_lr), disable=not sys.stderr.isatty()):
        runs = [
            train(estimator, args, args.seed + seed, measure=seed == 0)
            for seed in range(args.seeds)
        ]
        results[estimator.name] = (estimator, runs)
        final = runs[0].checkpoints[-1]
        checks.append(
            check_row(
                estimator.name, f"t = {args.target}, trained", final.theta, args.target, final.grads
            )
        )
    for estimator in [*estimators(args.cv_lr)[:6], reinforce_check, estimators(args.cv_lr)[-1]]:
        grads = fresh_check(estimator, 0.2, args.check_draws, args.seed + 7)
        checks.append(check_row(estimator.name, "t = 0.2, fresh", 0.5, 0.2, grads))

    lines = [
        f"RELAX toy: minimise E[(b − {args.target})²], b ~ Bernoulli(θ), from θ = 0.5; "
        f"Adam(lr={args.lr}) on logit θ, one sample per step, {args.steps} steps, "
        f"seeds {args.seed}..{args.seed + args.seeds - 1}; float64, 1 torch thread. "
        f"Exact gradient (1 − 2t)·θ(1 − θ) w.r.t. logit θ. Variance: {args.draws} extra "
        f"single-sample gradients every {args.every} steps on the first seed (no update); "
        "its log10 averaged over those checkpoints. Time: median wall time of one "
        "`svi.step()` over all steps and seeds.",
        "",
        "| estimator | what ran | final θ (per seed) | steps until θ < 0.1 (per seed) | "
        "final E[(b − t)²] (first seed) | mean log10 Var ĝ over training | ms per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (estimator, runs) in results.items():
        finals = " / ".join(f"{run.thetas[-1]:.3g}" for run in runs)
        reached = " / ".join(
            "never" if (steps := run.steps_below(0.1)) is None else str(steps) for run in runs
        )
        theta = runs[0].thetas[-1]
        expected = theta * (1 - args.target) ** 2 + (1 - theta) * args.target**2
        ms = 1e3 * statistics.median(s for run in runs for s in run.seconds)
        lines.append(
            f"| {name} | {estimator.what} | {finals} | {reached} | {expected:.6f} | "
            f"{describe_variance(runs[0], args.target)} | {ms:.2f} |"
        )
    lines += [
        "",
        "Correctness: mean of single-sample gradients of the loss w.r.t. logit θ against the "
        "exact (1 − 2t)·θ(1 − θ); z = (mean − exact) / standard error. 'trained': first "
        "seed, after training, at its final θ, trained control variate; 'fresh': θ = 0.5, "
        "cost (b − 0.2)², control variates at initialisation.",
        "",
        "| estimator | setting | θ | draws | mean ± stderr | exact | variance | check |",
        "|---|---|---|---|---|---|---|---|",
        *checks,
        "",
        f"Wall time: {time.perf_counter() - start:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "relax_toy.md").write_text(text)
        plot(results, args, output_dir / "relax_toy.png")
        print(f"wrote {output_dir / 'relax_toy.md'} and {output_dir / 'relax_toy.png'}")


if __name__ == "__main__":
    main()
