"""Two gloo ranks on 127.0.0.1 against one process on the union batch, with matched
latent samples: ``python pyro_ranks.py go,relax PORT`` spawns the ranks, and rank 0
prints one JSON line of the largest differences (it raises if a check fails).

Every rank first computes the single-process reference (union batches of ``2·B`` with
the same draws: GO's Bernoulli samples are given, RELAX's noise ``(u, v)`` is fixed
through ``infer={"relax_noise": ...}``), then trains the same initial parameters with

* the DDP pattern: ``DistributedDataParallel`` around a module whose forward is
  ``elbo.differentiable_loss`` (what a Lightning ``training_step`` returns), a
  ``torch.optim`` optimizer, and for RELAX ``control_variate_optim=DistributedOptim``;
* the SVI pattern: :class:`~pyro.infer.SVI` with :class:`~pyro_go.distributed.DistributedOptim`.
"""

from __future__ import annotations

import json
import os
import sys

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_go import REBAR, RELAX, TraceGO_ELBO, TraceRELAX_ELBO
from pyro_go.distributed import DistributedOptim

WORLD, NUM_DATA, LOCAL_BATCH, PIXELS, LATENTS, STEPS = 2, 8, 2, 5, 3, 3
LR = 0.05


def fixed_draws() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    uniform = torch.rand(4, NUM_DATA, LATENTS, generator=generator, dtype=torch.float64)
    data = torch.rand(NUM_DATA, PIXELS, generator=generator, dtype=torch.float64) < 0.5
    return {"z": (uniform[0] < 0.5).double(), "u": uniform[1], "v": uniform[2], "x": data.double()}


DRAWS = fixed_draws()


class Presampled(dist.Bernoulli):
    """A Bernoulli whose ``sample()`` returns given values, so that two ranks and one
    process on their union batch see the same latent samples."""

    def __init__(self, logits: torch.Tensor, presampled: torch.Tensor) -> None:
        super().__init__(logits=logits)
        self.presampled = presampled

    def expand(self, batch_shape, _instance=None) -> Presampled:
        batch_shape = torch.Size(batch_shape)
        return Presampled(self.logits.expand(batch_shape), self.presampled.expand(batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:
        return self.presampled.expand(torch.Size(sample_shape) + self.batch_shape)


class TinyVAE(nn.Module):
    """Bernoulli-latent VAE whose data plate is subsampled and scaled to ``NUM_DATA``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.encoder = nn.Linear(PIXELS, LATENTS)
        self.decoder = nn.Linear(LATENTS, PIXELS)
        self.prior_logits = nn.Parameter(torch.zeros(LATENTS))

    def model(self, index: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", NUM_DATA, subsample=index):
            prior = dist.Bernoulli(logits=self.prior_logits).expand([len(index), LATENTS])
            z = pyro.sample("z", prior.to_event(1))
            x = DRAWS["x"][index]
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, index: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", NUM_DATA, subsample=index):
            logits = self.encoder(DRAWS["x"][index])
            if self.kind == "go":
                pyro.sample("z", Presampled(logits, DRAWS["z"][index]).to_event(1))
            else:
                noise = (DRAWS["u"][index], DRAWS["v"][index])
                fn = dist.Bernoulli(logits=logits).to_event(1)
                pyro.sample("z", fn, infer={"relax_noise": noise})


class Loss(nn.Module):
    """``elbo.differentiable_loss`` as a module's forward: what DDP wraps."""

    def __init__(self, vae: TinyVAE, elbo) -> None:
        super().__init__()
        self.vae, self.elbo = vae, elbo

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, index)


def union_batch(step: int) -> torch.Tensor:
    size = WORLD * LOCAL_BATCH
    return torch.arange(size * step, size * (step + 1)) % NUM_DATA


def local_batch(step: int, rank: int) -> torch.Tensor:
    return union_batch(step).chunk(WORLD)[rank]


def make(kind: str, seed: int, optim=None):
    """The VAE and its ELBO (RELAX with REBAR's control variate, whose ``η · f`` scales
    with the plates like ``f``: learned networks output unscaled values, so their
    estimator at local batch ``B`` is not the union's), initialised from ``seed``."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = TinyVAE(kind)
    if kind == "go":
        return vae, TraceGO_ELBO()
    return vae, TraceRELAX_ELBO(REBAR(), control_variate_optim=optim)


def state(kind: str) -> dict[str, torch.Tensor]:
    """Every parameter in the param store (the VAE's and the control variate's)."""
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in sorted(store.keys())}


def reference(kind: str) -> tuple:
    """One process on the union batches: first gradients and the final parameters."""
    vae, elbo = make(kind, seed=0, optim=pyro.optim.Adam({"lr": LR}))
    optimizer = torch.optim.SGD(vae.parameters(), lr=LR)
    first, losses = None, []
    for step in range(STEPS):
        loss = elbo.differentiable_loss(vae.model, vae.guide, union_batch(step))
        loss.backward()
        losses.append(loss.item())
        if first is None:
            first = {name: p.grad.clone() for name, p in vae.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
    return first, state(kind), losses


def ddp_pattern(kind: str, rank: int) -> tuple:
    optim = DistributedOptim(pyro.optim.Adam({"lr": LR}))
    vae, elbo = make(kind, seed=0, optim=optim)
    module = DistributedDataParallel(Loss(vae, elbo))
    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    first, losses = None, []
    for step in range(STEPS):
        loss = module(local_batch(step, rank))
        loss.backward()
        mean_loss = loss.detach().clone()
        torch_dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / WORLD)
        if first is None:
            first = {name: p.grad.clone() for name, p in vae.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
    return first, state(kind), losses


def svi_pattern(kind: str, rank: int, seed: int) -> dict:
    """SVI with DistributedOptim; ``seed`` differs per rank when the control variate's
    network is RELAX's default (created lazily, at different values on each rank)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = TinyVAE(kind)
    torch.manual_seed(seed)
    if kind == "go":
        elbo = TraceGO_ELBO()
        optim = DistributedOptim(pyro.optim.SGD({"lr": LR}))
    else:
        elbo = TraceRELAX_ELBO(RELAX(rebar=True))
        optim = DistributedOptim(pyro.optim.Adam({"lr": LR}))
    svi = pyro.infer.SVI(vae.model, vae.guide, optim, elbo)
    for step in range(STEPS):
        svi.step(local_batch(step, rank))
    return state(kind)


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max([0.0, *((a[name] - b[name]).abs().max().item() for name in a)])


def same_on_all_ranks(values: dict) -> float:
    gathered = [None] * WORLD
    torch_dist.all_gather_object(gathered, values)
    return max(largest_difference(gathered[0], other) for other in gathered[1:])


def check(kind: str, rank: int) -> dict:
    """Trains with both patterns and checks them against the reference; the largest
    differences."""
    ref_first, ref_state, ref_losses = reference(kind)
    first, final, losses = ddp_pattern(kind, rank)
    svi_final = svi_pattern(kind, rank, seed=rank)
    # REBAR's parameters take Adam steps on W times the union's variance gradient: the
    # same steps up to Adam's epsilon, and so are the later steps of the rest
    cv = {name for name in final if ".relax_" in name}
    main = {name: final[name] for name in final if name not in cv}
    report = {
        "first_gradient": largest_difference(first, ref_first),
        "first_loss": abs(losses[0] - ref_losses[0]),
        "loss": max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)),
        "main_parameters": largest_difference(main, {n: ref_state[n] for n in main}),
        "control_variate": largest_difference(
            {n: final[n] for n in cv}, {n: ref_state[n] for n in cv}
        ),
        "ddp_ranks_differ": same_on_all_ranks(final),
        "svi_ranks_differ": same_on_all_ranks(svi_final),
    }
    if kind == "go":
        report["svi_vs_union"] = largest_difference(svi_final, ref_state)
    for key, value in report.items():
        if key.endswith("ranks_differ"):
            limit = 0.0
        elif key in ("first_gradient", "first_loss") or kind == "go":
            limit = 1e-10
        else:
            limit = 1e-6
        assert value <= limit, (kind, key, value, report)
    return report


def worker(rank: int, kinds: tuple[str, ...], port: int, out: str | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    try:
        report = {kind: check(kind, rank) for kind in kinds}
        if rank == 0:
            print(json.dumps(report), flush=True)
            if out:
                with open(out, "w") as handle:
                    json.dump(report, handle)
    finally:
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(tuple(sys.argv[1].split(",")), int(sys.argv[2])), nprocs=WORLD)
