"""GO vs the score function per second of CPU training: the linear discrete VAE.

The table of issue #6, regenerated: the GO paper's linear 200-Bernoulli VAE (appendix
I) on dynamically binarised MNIST, Adam 1e-3, each estimator trained for the same
wall-clock budget in this one process (evaluations off the clock), then the ELBO on the
full training and validation splits (one sample per image).  Estimators:

* GO, hand-written PyTorch, flips absorbed by the linear decoder as ``h + a_k W_k``
  (the GO authors' trick; flips evaluated in cache-sized chunks of latents);
* GO, hand-written PyTorch, the 200 flips stacked through the decoder;
* NVIL (score function with an input-dependent baseline network and running
  mean/variance normalisation of the learning signal; Mnih & Gregor 2014);
* score function with a decaying-average baseline (like ``TraceGraph_ELBO``);
* ``pyro_go.TraceGO_ELBO``, ``TraceGO_ELBO(absorb_linear=False)`` and
  ``TraceGO_ELBO(compile_likelihood=True)`` (its compile time on the clock) in ``SVI``
  with ``pyro.optim.Adam``, and ``TraceGO_ELBO`` and ``TraceGO_ELBO(compile_likelihood=True)``
  with the hand-written rows' optimizer (one ``torch.optim.Adam`` stepped on
  ``differentiable_loss``), which shows what ``SVI`` and Pyro's per-parameter optimizers
  cost;
* ``numpyro_go.TraceGO_ELBO`` and ``TraceGO_ELBO(absorb_linear=False)`` (jitted).

Run: ``python benchmarks/vae_budget_table.py --data mnist.npz --budget 240
--batch-size 24 [--estimators ...] [--seed N] [--tag NAME]``; ``--quick`` for a smoke run
on the bundled subset.  The table's header names the CPU: per second, GO's ranking
against the score function depends on it (``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vae_step_time import hand_written_go_surrogate
from wallclock import RESULTS, Curve, cpu_name, plot_curves, train_for_budget

from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches

LATENTS, PIXELS = 200, 784


# ---------------------------------------------------------------- plain PyTorch pieces


def log_f_parts(vae: DiscreteVAE, x, z, logits_q):
    """Per image: ``log p(x|z)``, and ``log p(z) − log q(z)`` with q's logits fixed."""
    likelihood = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="none").sum(-1)
    prior = vae.prior_logits
    prior_minus_q = (z * prior - F.softplus(prior)).sum(-1) - (
        z * logits_q.detach() - F.softplus(logits_q.detach())
    ).sum(-1)
    return likelihood, prior_minus_q


def torch_elbo(vae: DiscreteVAE, x: torch.Tensor) -> torch.Tensor:
    """One-sample ELBO per image (no gradient tricks)."""
    logits_q = vae.encoder(x)
    z = torch.bernoulli(torch.sigmoid(logits_q))
    likelihood, prior_minus_q = log_f_parts(vae, x, z, logits_q)
    return likelihood + prior_minus_q


def go_linear_trick_loss(
    vae: DiscreteVAE, x: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """GO with the decoder's first (only) linear layer absorbing the flips (eq. 34), the
    flips evaluated ``chunk`` latents at a time (default: about 2^17 logits per chunk,
    the fastest on this machine: 19 ms per step at batch 24 against 31 ms for 50)."""
    chunk = chunk or max(1, 2**17 // (x.shape[0] * PIXELS))
    logits_q = vae.encoder(x)
    probs = torch.sigmoid(logits_q)
    z = torch.bernoulli(probs.detach())
    likelihood, prior_minus_q = log_f_parts(vae, x, z, logits_q)
    with torch.no_grad():
        sign = 1 - 2 * z  # [B, L]
        h = vae.decoder(z)  # [B, P]
        weight = vae.decoder[0].weight.t()  # [L, P]: the linear decoder's one layer
        flipped_likelihood = []
        for start in range(0, LATENTS, chunk):
            logits = h.unsqueeze(1) + sign[:, start : start + chunk, None] * weight[start:][:chunk]
            target = x.unsqueeze(1).expand_as(logits)
            flipped_likelihood.append(
                -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
            )
        delta = torch.cat(flipped_likelihood, 1) - likelihood.unsqueeze(1)
        delta += sign * (vae.prior_logits - logits_q)  # flip changes z·logit terms
        local = sign * delta
    f = likelihood + prior_minus_q
    term = (local * probs).sum()
    return -(f.sum() + term - term.detach()) / x.shape[0]


class NVILBaseline(nn.Module):
    """Input-dependent baseline ``b(x)`` (one tanh hidden layer of 100)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(PIXELS, 100), nn.Tanh(), nn.Linear(100, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class ScoreFunction:
    """Score-function losses: NVIL (baseline network + normalisation) or a decaying
    average baseline."""

    def __init__(self, vae: DiscreteVAE, nvil: bool, decay: float = 0.9):
        self.vae, self.nvil, self.decay = vae, nvil, decay
        self.baseline = NVILBaseline() if nvil else None
        self.mean, self.var = 0.0, 1.0

    def parameters(self):
        params = list(self.vae.parameters())
        return params + (list(self.baseline.parameters()) if self.nvil else [])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        logits_q = self.vae.encoder(x)
        z = torch.bernoulli(torch.sigmoid(logits_q)).detach()
        likelihood, prior_minus_q = log_f_parts(self.vae, x, z, logits_q)
        f = likelihood + prior_minus_q
        log_q = -F.binary_cross_entropy_with_logits(logits_q, z, reduction="none").sum(-1)
        signal = f.detach()
        extra = 0.0
        if self.nvil:
            predicted = self.baseline(x)
            centred = signal - self.mean - predicted
            self.mean = self.decay * self.mean + (1 - self.decay) * signal.mean().item()
            batch_var = centred.detach().var().item() if x.shape[0] > 1 else 1.0
            self.var = self.decay * self.var + (1 - self.decay) * batch_var
            advantage = centred.detach() / max(1.0, self.var**0.5)
            extra = (centred**2).mean()
        else:
            advantage = signal - self.mean
            self.mean = self.decay * self.mean + (1 - self.decay) * signal.mean().item()
        surrogate = (f + log_q * advantage).mean()
        return -surrogate + extra


def torch_runner(name: str, args):
    torch.manual_seed(args.seed)
    vae = DiscreteVAE()
    if name.startswith("NVIL") or name.startswith("score function"):
        estimator = ScoreFunction(vae, nvil=name.startswith("NVIL"))
        params, loss = estimator.parameters(), estimator.loss
    elif name.startswith("GO, linear trick"):
        params, loss = list(vae.parameters()), lambda x: go_linear_trick_loss(vae, x)
    elif name.startswith("GO, stacked"):
        params = list(vae.parameters())

        def loss(x):
            return hand_written_go_surrogate(vae, x) / x.shape[0]
    else:
        return pyro_runner(name, args)
    optimizer = torch.optim.Adam(params, lr=args.lr)

    def step(x):
        optimizer.zero_grad()
        loss(torch.from_numpy(x)).backward()
        optimizer.step()

    def evaluate(images: np.ndarray) -> float:
        with torch.no_grad():
            return float(torch_elbo(vae, torch.from_numpy(images)).mean())

    return step, evaluate


def pyro_runner(name: str, args):
    import pyro
    from pyro.infer import SVI

    from pyro_go import TraceGO_ELBO

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    pyro.enable_validation(False)
    vae = DiscreteVAE()
    elbo = TraceGO_ELBO(
        absorb_linear="absorb_linear=False" not in name,
        compile_likelihood="compile_likelihood=True" in name,
    )

    def evaluate(images: np.ndarray) -> float:
        with torch.no_grad():
            return float(torch_elbo(vae, torch.from_numpy(images)).mean())

    if "torch.optim" not in name:
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), elbo)
        return lambda x: svi.step(torch.from_numpy(x)), evaluate
    # the optimizer of the hand-written rows: one torch.optim.Adam over all parameters,
    # instead of pyro.optim's one optimizer per parameter (Pyro's "custom objectives")
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)

    def step(x):
        optimizer.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, torch.from_numpy(x)).backward()
        optimizer.step()

    return step, evaluate


def numpyro_runner(name: str, args):
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    from numpyro_go import TraceGO_ELBO
    from numpyro_go.contrib import DiscreteVAE as JaxVAE

    vae = JaxVAE()
    elbo = TraceGO_ELBO(absorb_linear="absorb_linear=False" not in name)
    svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(args.lr), loss=elbo)
    state = [svi.init(jax.random.PRNGKey(args.seed), np.zeros((args.batch_size, PIXELS)))]
    update = jax.jit(svi.update)
    evaluation = jax.jit(
        lambda key, params, x: -Trace_ELBO().loss(key, params, vae.model, vae.guide, x)
    )
    keys = iter(jax.random.split(jax.random.PRNGKey(args.seed + 1), 10**6))

    def step(x):
        state[0], loss = update(state[0], x)
        loss.block_until_ready()

    def evaluate(images: np.ndarray) -> float:
        return float(evaluation(next(keys), svi.get_params(state[0]), images)) / len(images)

    return step, evaluate


ESTIMATORS = {
    "GO, linear trick (hand-written PyTorch)": torch_runner,
    "GO, stacked flips (hand-written PyTorch)": torch_runner,
    "NVIL (hand-written PyTorch)": torch_runner,
    "score function + decaying-average baseline (hand-written PyTorch)": torch_runner,
    "pyro_go.TraceGO_ELBO": torch_runner,
    "pyro_go.TraceGO_ELBO(absorb_linear=False)": torch_runner,
    "pyro_go.TraceGO_ELBO(compile_likelihood=True)": torch_runner,
    "pyro_go.TraceGO_ELBO, torch.optim.Adam on differentiable_loss": torch_runner,
    "pyro_go.TraceGO_ELBO(compile_likelihood=True), torch.optim.Adam on differentiable_loss": (
        torch_runner
    ),
    "numpyro_go.TraceGO_ELBO": numpyro_runner,
    "numpyro_go.TraceGO_ELBO(absorb_linear=False)": numpyro_runner,
}


def evaluate_split(evaluate, images: np.ndarray, rng, batch: int = 1000) -> float:
    """Mean ELBO per image over ``images`` (binarised afresh), in batches."""
    total = 0.0
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        total += evaluate(dynamic_binarize(chunk, rng)) * len(chunk)
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="mnist.npz (default: bundled subset)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per estimator")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=float, default=60.0)
    parser.add_argument("--estimators", nargs="*", default=list(ESTIMATORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many CPU cores, with as many intra-op threads",
    )
    parser.add_argument("--quick", action="store_true", help="5 s each, bundled subset")
    parser.add_argument(
        "--tag", default="", help="appended to the results files' names (e.g. the machine)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        # XLA's CPU runtime runs work on its own threads whatever the flags say: only
        # pinning the process makes "one thread" mean one core for every estimator
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        torch.set_num_threads(args.threads)
        os.environ["XLA_FLAGS"] = (
            f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
            f"intra_op_parallelism_threads={args.threads}"
        )
    if args.quick:
        args.budget, args.eval_every, args.data = 5.0, 5.0, None
    data = load_mnist(args.data)
    curves: list[Curve] = []
    finals = []
    for name in args.estimators:
        step, evaluate = ESTIMATORS[name](name, args)
        rng, eval_rng = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
        batches = (
            dynamic_binarize(x, rng) for x in minibatches(data["x_train"], args.batch_size, rng)
        )

        def monitor_valid(evaluate=evaluate, rng=eval_rng) -> dict[str, float]:
            return {"valid (2k)": evaluate_split(evaluate, data["x_valid"][:2000], rng)}

        curve = train_for_budget(name, step, batches, args.budget, monitor_valid, args.eval_every)
        start = time.perf_counter()
        final = {
            split: evaluate_split(evaluate, data[f"x_{split}"], eval_rng)
            for split in ("train", "valid")
        }
        print(f"{name}: evaluated in {time.perf_counter() - start:.0f} s", flush=True)
        curves.append(curve)
        finals.append(final)
    lines = [
        f"Linear 200-Bernoulli VAE, MNIST ({len(data['x_train'])} train / "
        f"{len(data['x_valid'])} valid), batch {args.batch_size}, Adam {args.lr}, "
        f"{args.budget:.0f} s of training per estimator, one process, "
        f"{args.threads or torch.get_num_threads()} thread(s) of {cpu_name()}.",
        "",
        "| estimator | ms per step | steps | train ELBO | valid ELBO |",
        "|---|---|---|---|---|",
    ]
    for curve, final in zip(curves, finals, strict=True):
        lines.append(
            f"| {curve.name} | {curve.ms_per_step:.1f} | {curve.steps[-1]} | "
            f"{final['train']:.1f} | {final['valid']:.1f} |"
        )
    print("\n".join(lines))
    if not args.quick:
        stem = f"vae_budget_batch{args.batch_size}"
        if args.threads and args.threads > 1:
            stem += f"_{args.threads}threads"
        if args.seed:
            stem += f"_seed{args.seed}"
        if args.tag:
            stem += f"_{args.tag}"
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
        plot_curves(
            curves,
            {"valid (2k)": "-"},
            f"linear VAE, batch {args.batch_size}: validation ELBO (2k images)",
            RESULTS / f"{stem}.png",
        )


if __name__ == "__main__":
    main()
