"""Train the discrete VAE data-parallel: one process per core (or GPU), launched with

    torchrun --nproc_per_node=2 examples/distributed_discrete_vae.py --steps 500

or run as one ordinary process (``python examples/distributed_discrete_vae.py``).
Each rank trains on its own share of every global batch of ``--batch-size x ranks``
images; the data plate is scaled to the whole training set, so every rank's loss
estimates the same ELBO and averaging their gradients is one step on the global batch.

``--pattern ddp`` (default) is the PyTorch pattern of Pyro's Lightning example:
``DistributedDataParallel`` around a module whose forward is
``elbo.differentiable_loss``, and a ``torch.optim`` optimizer.  ``--pattern svi`` keeps
Pyro's ``SVI`` and averages the gradients with ``pyro_go.distributed.DistributedOptim``.
``--pattern lightning`` runs the same loss as a ``LightningModule.training_step`` under
``lightning.Trainer`` (``pip install lightning``).  ``--estimator relax`` trains
``TraceRELAX_ELBO``; its control variate's parameters are kept identical on every rank
by ``DistributedOptim``.  Data: ``--data path/to/mnist.npz`` (or $PYRO_GO_DATA), else
the subset bundled with pyro-go.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_go import RELAX, TraceGO_ELBO, TraceRELAX_ELBO
from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches
from pyro_go.distributed import DistributedOptim


class ELBOLoss(nn.Module):
    """``forward(x)`` is the ELBO's differentiable loss on this rank's images: the module
    that DDP wraps and the value a Lightning ``training_step`` returns."""

    def __init__(self, vae: DiscreteVAE, elbo, num_data: int) -> None:
        super().__init__()
        self.vae, self.elbo, self.num_data = vae, elbo, num_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, self.num_data)


def make_elbo(estimator: str, lr: float, control_variate_optim: bool):
    if estimator == "go":
        return TraceGO_ELBO()
    optim = DistributedOptim(pyro.optim.Adam({"lr": 10 * lr})) if control_variate_optim else None
    return TraceRELAX_ELBO(RELAX(rebar=True), control_variate_optim=optim)


def local_batches(images: np.ndarray, args, rank: int, world: int):
    """This rank's share of each global batch: every rank draws the same global order
    (same seed) and keeps its own slice."""
    order_rng = np.random.default_rng(args.seed)
    for batch in minibatches(images, args.batch_size * world, order_rng):
        yield batch[rank * args.batch_size : (rank + 1) * args.batch_size]


def train_torch(args, vae, data, rank: int, world: int, binarize_rng) -> float:
    """The ``ddp`` and ``svi`` patterns; returns the seconds spent in the steps."""
    num_data = len(data["x_train"])
    batches = local_batches(data["x_train"], args, rank, world)
    if args.pattern == "svi":
        elbo = make_elbo(args.estimator, args.lr, control_variate_optim=False)
        svi = SVI(vae.model, vae.guide, DistributedOptim(pyro.optim.Adam({"lr": args.lr})), elbo)

        def step(x):
            return svi.step(x, num_data)

    else:
        elbo = make_elbo(args.estimator, args.lr, control_variate_optim=True)
        loss_fn = ELBOLoss(vae, elbo, num_data)
        if world > 1:
            loss_fn = DistributedDataParallel(loss_fn)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=args.lr)

        def step(x):
            loss = loss_fn(x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

    running, start = None, time.perf_counter()
    for index in range(1, args.steps + 1):
        x = torch.from_numpy(dynamic_binarize(next(batches), binarize_rng))
        elbo_per_image = -step(x) / num_data
        running = elbo_per_image if running is None else 0.95 * running + 0.05 * elbo_per_image
        if rank == 0 and (index % args.log_every == 0 or index == args.steps):
            print(f"{index:>6} {running:>11.2f} {time.perf_counter() - start:>8.1f}", flush=True)
    return time.perf_counter() - start


def train_lightning(args, vae, data, world: int) -> float:
    """The ``lightning`` pattern: the same loss as a ``training_step``."""
    import lightning

    num_data = len(data["x_train"])

    class LitVAE(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            elbo = make_elbo(args.estimator, args.lr, control_variate_optim=True)
            self.loss_fn = ELBOLoss(vae, elbo, num_data)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = self.loss_fn(x)
            self.log("elbo_per_image", -loss.detach() / num_data, prog_bar=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.loss_fn.parameters(), lr=args.lr)

    rng = np.random.default_rng(args.seed)
    images = dynamic_binarize(data["x_train"], rng)  # one binarisation, for brevity
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images))
    # Lightning gives each rank a DistributedSampler: batch_size is per rank
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(LitVAE(), loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_GO_DATA"))
    parser.add_argument("--estimator", choices=["go", "relax"], default="go")
    parser.add_argument("--pattern", choices=["ddp", "svi", "lightning"], default="ddp")
    parser.add_argument("--hidden", type=int, default=0, help="0: linear; 200: 200-200 tanh")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50, help="images per rank")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if world > 1 and args.pattern != "lightning":
        dist.init_process_group("gloo")  # torchrun's environment: MASTER_ADDR, RANK, ...
    # the same initial parameters on every rank, then each rank its own latent draws
    pyro.set_rng_seed(args.seed)
    data = load_mnist(args.data)
    vae = DiscreteVAE(hidden=(args.hidden, args.hidden) if args.hidden else ())
    pyro.set_rng_seed(args.seed + 1 + rank)
    binarize_rng = np.random.default_rng([args.seed, rank])
    if rank == 0:
        print(
            f"discrete VAE: {world} rank(s) x {args.batch_size} images per step, "
            f"pattern={args.pattern}, estimator={args.estimator}, "
            f"{len(data['x_train'])} training images"
        )
        print(f"{'step':>6} {'train ELBO':>11} {'seconds':>8}")
    if args.pattern == "lightning":
        elapsed = train_lightning(args, vae, data, world)
        rank = int(os.environ.get("RANK", "0"))
    else:
        elapsed = train_torch(args, vae, data, rank, world, binarize_rng)
    if rank == 0:
        images_per_second = args.steps * args.batch_size * world / elapsed
        elbo = Trace_ELBO()
        with torch.no_grad():
            x = torch.from_numpy(dynamic_binarize(data["x_valid"], binarize_rng))
            valid = -elbo.loss(vae.model, vae.guide, x) / len(x)
        print(
            f"validation ELBO per image: {valid:.2f}  "
            f"({1e3 * elapsed / args.steps:.1f} ms/step, {images_per_second:.0f} images/s)"
        )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
