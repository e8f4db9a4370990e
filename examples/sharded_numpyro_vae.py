"""Train the discrete VAE with NumPyro, the batch sharded over devices (data parallel):

    python examples/sharded_numpyro_vae.py --devices 2 --steps 500

``--devices N`` splits the host CPU into N XLA devices (on a GPU/TPU host, leave it out
and every accelerator is used).  ``--shard-perturbations`` also splits the replays of
``D_y f`` over the devices (for many discrete latents and small batches).  Multi-host:
start one process per host (here two on one machine, over loopback) with

    python examples/sharded_numpyro_vae.py --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 0   # and --process-id 1 in a second shell

``jax.distributed.initialize`` joins them; each process binarises and feeds its own
share of every global batch, and one jitted ``svi.update`` runs across all devices.
Data: ``--data path/to/mnist.npz`` (or $PYRO_GO_DATA), else the bundled subset.
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_GO_DATA"))
    parser.add_argument("--devices", type=int, default=0, help="host CPU devices (0: as is)")
    parser.add_argument("--shard-perturbations", action="store_true")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50, help="images per global step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.devices:  # before JAX starts
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax
    import numpy as np
    import numpyro
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from numpyro.infer import SVI, Trace_ELBO

    from numpyro_go import TraceGO_ELBO
    from numpyro_go.contrib import DiscreteVAE
    from numpyro_go.sharding import ShardedPerturbations, replicate
    from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches

    if args.coordinator:
        # CPU collectives across processes go through gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if args.batch_size % mesh.size:
        raise SystemExit(f"--batch-size must be a multiple of the {mesh.size} devices")
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    leader = jax.process_index() == 0

    data = load_mnist(args.data)
    vae = DiscreteVAE()
    elbo = TraceGO_ELBO()
    if args.shard_perturbations:
        elbo = ShardedPerturbations(elbo, mesh, "data")
    svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(args.lr), elbo)

    # every process draws the same global order and keeps its own rows of each batch
    order_rng = np.random.default_rng(args.seed)
    binarize_rng = np.random.default_rng([args.seed, jax.process_index()])
    local = args.batch_size // jax.process_count()
    start_row = jax.process_index() * local

    def next_batch(batches) -> jax.Array:
        rows = next(batches)[start_row : start_row + local]
        x = dynamic_binarize(rows, binarize_rng)
        return jax.make_array_from_process_local_data(batch_sharding, x)

    batches = minibatches(data["x_train"], args.batch_size, order_rng)
    x = next_batch(batches)
    state = replicate(svi.init(jax.random.PRNGKey(args.seed), x), mesh)
    update = jax.jit(svi.update)
    if leader:
        print(
            f"discrete VAE (NumPyro): {args.batch_size} images per step over "
            f"{mesh.size} device(s) in {jax.process_count()} process(es), "
            f"perturbations {'sharded' if args.shard_perturbations else 'per device'}"
        )
        print(f"{'step':>6} {'train ELBO':>11} {'seconds':>8}")
    state, loss = update(state, x)  # compiles
    jax.block_until_ready(loss)
    running, start = None, time.perf_counter()
    for step in range(1, args.steps + 1):
        state, loss = update(state, next_batch(batches))
        elbo_per_image = -float(loss.addressable_data(0)) / args.batch_size
        running = elbo_per_image if running is None else 0.95 * running + 0.05 * elbo_per_image
        if leader and (step % args.log_every == 0 or step == args.steps):
            print(f"{step:>6} {running:>11.2f} {time.perf_counter() - start:>8.1f}", flush=True)
    elapsed = time.perf_counter() - start
    if leader:
        params = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), svi.get_params(state))
        x_valid = dynamic_binarize(data["x_valid"], binarize_rng)
        loss = Trace_ELBO().loss(jax.random.PRNGKey(1), params, vae.model, vae.guide, x_valid)
        print(
            f"validation ELBO per image: {-float(loss) / len(x_valid):.2f}  "
            f"({1e3 * elapsed / args.steps:.1f} ms/step, "
            f"{args.steps * args.batch_size / elapsed:.0f} images/s)"
        )


if __name__ == "__main__":
    main()
