"""Scaling out: the discrete VAE (200 Bernoulli latents, linear nets, TraceGO_ELBO) with
one and two processes (Pyro, DDP over gloo) and one and two devices (NumPyro, the batch
sharded over host devices), a fixed batch per process or device (weak scaling).

    python benchmarks/scaling.py [--steps 30] [--batch-size 50] [--out results/scaling.md]

Per configuration: wall-clock and CPU time per step (``time.process_time`` of the
process, summed over a run's ranks for Pyro), images per second (wall clock), and for
DDP the communication share ``1 − t(no_sync) / t(sync)``, wall clock and CPU: the step
time that gradient averaging adds, from the same steps run inside
``DistributedDataParallel.no_sync()`` (negative when it is below the noise).
NumPyro's devices share one process, so its CPU time covers both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pyro_rank(rank: int, world: int, port: int, args, out: str) -> None:
    import pyro
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pyro_go import TraceGO_ELBO
    from pyro_go.contrib import DiscreteVAE
    from pyro_go.datasets import dynamic_binarize, load_mnist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    pyro.set_rng_seed(rank)
    images = load_mnist(args.data)["x_train"]
    rng = np.random.default_rng(rank)
    vae = DiscreteVAE()
    elbo = TraceGO_ELBO()
    num_data = len(images)

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, x):
            return elbo.differentiable_loss(vae.model, vae.guide, x, num_data)

    module = DistributedDataParallel(Loss())
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    batches = [
        torch.from_numpy(dynamic_binarize(images[rng.choice(num_data, args.batch_size)], rng))
        for _ in range(8)
    ]

    def run(steps: int, sync: bool) -> tuple[float, float]:
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(steps):
            context = module.no_sync() if not sync else _nullcontext()
            with context:
                module(batches[step % len(batches)]).backward()
            optimizer.step()
            optimizer.zero_grad()
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

    run(5, True)  # warm up
    times = {}
    for sync in (True, False, True, False):  # interleaved against drifting load
        wall, cpu = run(args.steps, sync)
        times.setdefault(sync, []).append((wall, cpu))
    result = {str(sync): np.mean(values, axis=0).tolist() for sync, values in times.items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def measure_pyro(world: int, args) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pyro.json")
        mp.spawn(pyro_rank, args=(world, port, args, out), nprocs=world)
        with open(out) as handle:
            ranks = json.load(handle)
    wall = max(rank["True"][0] for rank in ranks)
    no_sync = max(rank["False"][0] for rank in ranks)
    cpu = sum(rank["True"][1] for rank in ranks)
    cpu_no_sync = sum(rank["False"][1] for rank in ranks)
    return {
        "wall_ms": 1e3 * wall,
        "cpu_ms": 1e3 * cpu,
        "images_per_s": world * args.batch_size / wall,
        "comm_share": (1 - no_sync / wall, 1 - cpu_no_sync / cpu) if world > 1 else None,
    }


NUMPYRO_CHILD = """
import json, os, sys, time
import jax, numpy as np, numpyro
from jax.sharding import Mesh
from numpyro.infer import SVI
from numpyro_go import TraceGO_ELBO
from numpyro_go.contrib import DiscreteVAE
from numpyro_go.sharding import replicate, shard_batch
from pyro_go.datasets import dynamic_binarize, load_mnist
devices, batch, steps, data = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
images = load_mnist(data or None)["x_train"]
rng = np.random.default_rng(0)
batches = [shard_batch(dynamic_binarize(images[rng.choice(len(images), batch * devices)], rng),
                       mesh) for _ in range(8)]
vae = DiscreteVAE()
svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(1e-3), TraceGO_ELBO())
state = replicate(svi.init(jax.random.PRNGKey(0), batches[0]), mesh)
update = jax.jit(svi.update)
for step in range(5):
    state, loss = update(state, batches[step % 8])
jax.block_until_ready(loss)
walls, cpus = [], []
for repeat in range(2):
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        state, loss = update(state, batches[step % 8])
    jax.block_until_ready(loss)
    walls.append((time.perf_counter() - wall) / steps)
    cpus.append((time.process_time() - cpu) / steps)
print(json.dumps({"wall": float(np.mean(walls)), "cpu": float(np.mean(cpus))}))
"""


def measure_numpyro(devices: int, args) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", NUMPYRO_CHILD, str(devices), str(args.batch_size)]
    command += [str(args.steps), args.data or ""]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "wall_ms": 1e3 * times["wall"],
        "cpu_ms": 1e3 * times["cpu"],
        "images_per_s": devices * args.batch_size / times["wall"],
        "comm_share": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=50, help="per process or device")
    parser.add_argument("--data", default=os.environ.get("PYRO_GO_DATA"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for label, measure in (("Pyro DDP (gloo)", measure_pyro), ("NumPyro sharded", measure_numpyro)):
        for count in (1, 2):
            rows.append((label, count, measure(count, args)))
    load_after = os.getloadavg()
    lines = [
        f"Discrete VAE, TraceGO_ELBO, {args.batch_size} images per process/device, "
        f"{args.steps} steps x 2 repeats after 5 warm-up steps, {os.cpu_count()} CPU cores; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
        + (
            " (other jobs shared the cores: trust CPU ms over wall)."
            if max(load_before[0], load_after[0]) > (os.cpu_count() or 1) + 0.5
            else "."
        ),
        "",
        "| engine | processes / devices | step wall ms | step CPU ms (all ranks) "
        "| images/s (wall) | communication share (wall, CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for label, count, row in rows:
        share = row["comm_share"]
        share = "n/a" if share is None else f"{100 * share[0]:+.0f}%, {100 * share[1]:+.0f}%"
        lines.append(
            f"| {label} | {count} | {row['wall_ms']:.1f} | {row['cpu_ms']:.1f} "
            f"| {row['images_per_s']:.0f} | {share} |"
        )
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    lines += ["", f"Regenerate: `{command.strip()}`"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
