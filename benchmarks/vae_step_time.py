"""Time per SVI step and gradient variance of the 200-Bernoulli-latent VAE.

Compares, in one process and alternating step by step (medians reported):

* ``pyro_go.TraceGO_ELBO`` (generic: one vectorised replay of the model over the 200
  stacked flips, batched across the data plate; the decoder's first linear layer absorbs
  the flips), the same with ``compile_likelihood=True`` (the flipped likelihood's
  reduction as one ``torch.compile`` kernel, compiled during the warm-up steps) and with
  ``absorb_linear=False`` (the product over the stack),
* ``pyro.infer.Trace_ELBO`` (score function),
* a hand-written plain-PyTorch GO step that stacks the 200 flips and runs them through
  the decoder once (the generic floor: 200 flipped evaluations plus one base
  evaluation, no autograd through the flips; GO paper appendix I, eq. 34).

Then it measures the variance of the single-sample gradient of the encoder parameters
for GO and Trace_ELBO at the same parameter point, and the variance x time product.

Model (GO paper appendix I, "1-layer linear"): ``z ~ Bern(σ(0))^200``,
``x ~ Bern(σ(W_p z + b_p))``; guide ``z ~ Bern(σ(W_q x + b_q))``; dynamically binarised
MNIST, batch 50.

Run: ``python benchmarks/vae_step_time.py [--data PATH] [--steps 30] [--quick]``
"""

from __future__ import annotations

import argparse

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from wallclock import cpu_name, median_step_ms

from pyro_go import TraceGO_ELBO
from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist

LATENTS, PIXELS = 200, 784


def hand_written_go_surrogate(vae: DiscreteVAE, x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO surrogate of the stacked-flips GO step (plain PyTorch).

    ``f(z) = log p(x, z) − log q_{stop φ}(z)``; for each latent v,
    ``D_v f = (1 − 2 z_v) [f(z with z_v flipped) − f(z)]`` and the GO term is
    ``Σ_v stop(D_v f) · P_v`` (eq. 34).
    """
    logits_q = vae.encoder(x)
    probs_q = torch.sigmoid(logits_q)
    prior = dist.Bernoulli(logits=vae.prior_logits)
    z = torch.bernoulli(probs_q.detach())

    def f(latents: torch.Tensor) -> torch.Tensor:
        log_p = dist.Bernoulli(logits=vae.decoder(latents)).log_prob(x).sum(-1)
        log_p = log_p + prior.log_prob(latents).sum(-1)
        return log_p - dist.Bernoulli(logits=logits_q.detach()).log_prob(latents).sum(-1)

    f_base = f(z)
    with torch.no_grad():
        flips = z.unsqueeze(0).repeat(LATENTS, 1, 1)
        index = torch.arange(LATENTS)
        flips[index, :, index] = 1 - flips[index, :, index]
        delta = (f(flips) - f_base).transpose(0, 1)  # [batch, latents]
        local = (1 - 2 * z) * delta
    surrogate = f_base.sum() + (local * probs_q).sum() - (local * probs_q).sum().detach()
    return -surrogate


def time_steps(vae, batches, steps: int) -> dict[str, float]:
    """Median wall time per optimisation step, estimators alternating."""
    pyro.clear_param_store()
    svi_go = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGO_ELBO())
    svi_go_compiled = SVI(
        vae.model,
        vae.guide,
        pyro.optim.Adam({"lr": 1e-3}),
        TraceGO_ELBO(compile_likelihood=True),
    )
    svi_go_stacked = SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGO_ELBO(absorb_linear=False)
    )
    svi_trace = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def hand_step(x):
        optimizer.zero_grad()
        hand_written_go_surrogate(vae, x).backward()
        optimizer.step()

    runners = {
        "TraceGO_ELBO": svi_go.step,
        "TraceGO_ELBO(compile_likelihood=True)": svi_go_compiled.step,
        "TraceGO_ELBO(absorb_linear=False)": svi_go_stacked.step,
        "hand-written stacked GO": hand_step,
        "Trace_ELBO": svi_trace.step,
    }
    return median_step_ms(runners, batches, steps)


def gradient_variance(vae, x, elbo, samples: int) -> float:
    """Mean over encoder coordinates of the variance of single-sample gradients."""
    params = list(vae.encoder.parameters())
    rows = []
    for _ in range(samples):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    stacked = torch.stack(rows)
    return stacked.var(0).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="mnist.npz (default: bundled subset)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variance-samples", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.variance_samples, args.train_steps = 5, 10, 20
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pyro.enable_validation(False)
    images = load_mnist(args.data)["x_train"]
    rng = np.random.default_rng(args.seed)

    def batch_stream():
        while True:
            rows = rng.integers(0, images.shape[0], args.batch_size)
            yield torch.from_numpy(dynamic_binarize(images[rows], rng))

    batches = batch_stream()
    vae = DiscreteVAE()
    print(
        f"torch threads: {torch.get_num_threads()} ({cpu_name()}), batch {args.batch_size}, "
        f"{LATENTS} latents"
    )
    times = time_steps(vae, batches, args.steps)
    floor = times["hand-written stacked GO"]
    print("\n| estimator | median time per step (ms) | vs hand-written |")
    print("|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} | {ms / floor:.2f}x |")

    # train briefly with GO so the variance is measured at a realistic point
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGO_ELBO())
    for _ in range(args.train_steps):
        svi.step(next(batches))
    x = next(batches)
    variances = {
        "TraceGO_ELBO": gradient_variance(vae, x, TraceGO_ELBO(), args.variance_samples),
        "Trace_ELBO": gradient_variance(vae, x, Trace_ELBO(), args.variance_samples),
    }
    print(f"\nencoder-gradient variance after {args.train_steps} GO steps, same batch")
    print("| estimator | mean variance per coordinate | variance x step time (ms) |")
    print("|---|---|---|")
    for name, var in variances.items():
        print(f"| {name} | {var:.3e} | {var * times[name]:.3e} |")
    ratio = variances["Trace_ELBO"] / variances["TraceGO_ELBO"]
    print(
        f"\nTrace_ELBO / GO variance ratio: {ratio:.0f}x; "
        f"per unit of time: {ratio * times['Trace_ELBO'] / times['TraceGO_ELBO']:.1f}x"
    )


if __name__ == "__main__":
    main()
