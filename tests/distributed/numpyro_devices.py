"""NumPyro on two host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``,
set here before JAX is imported): ``python numpyro_devices.py [--full]`` prints one JSON line of
the largest differences between sharded and unsharded runs, and raises if a check
fails.

* the batch sharded over the devices gives the SVI steps of one device on the whole
  batch, for TraceGO_ELBO and TraceRELAX_ELBO (same keys, same draws);
* :class:`~numpyro_go.sharding.ShardedPerturbations` gives TraceGO_ELBO's steps, with
  a stack (1 + 9 latents) that does not divide over two devices, in chunks;
* the parameters (RELAX's control-variate parameters included) hold the same values on
  every device after the steps.

Without ``--full`` only TraceGO_ELBO and one step (each run compiles a step).
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

from numpyro_go import TraceGO_ELBO, TraceRELAX_ELBO  # noqa: E402
from numpyro_go.contrib.discrete_vae import DiscreteVAE  # noqa: E402
from numpyro_go.sharding import ShardedPerturbations, replicate, shard_batch  # noqa: E402

LATENTS, PIXELS, BATCH = 9, 12, 6


def largest_difference(a, b) -> float:
    return max(
        float(jnp.abs(x - y).max()) for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )


def spread_over_devices(tree) -> float:
    """The largest difference between the copies of a replicated array on its devices."""
    spread = 0.0
    for leaf in jax.tree.leaves(tree):
        shards = [np.asarray(shard.data) for shard in leaf.addressable_shards]
        assert len(shards) == len(jax.devices()), leaf.sharding
        spread = max(spread, *(float(np.abs(s - shards[0]).max()) for s in shards))
    return spread


def main(kinds: tuple[str, ...], steps: int) -> None:
    assert len(jax.devices()) == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    vae = DiscreteVAE(latents=LATENTS, pixels=PIXELS)
    x = (np.random.default_rng(0).random((BATCH, PIXELS)) < 0.5).astype(np.float32)
    x_sharded = shard_batch(x, mesh)
    report = {}
    for kind in kinds:
        elbo = TraceGO_ELBO(chunk_size=3) if kind == "go" else TraceRELAX_ELBO()
        guide = vae.guide if kind == "go" else elbo.wrap_guide(vae.guide)
        svi = SVI(vae.model, guide, numpyro.optim.Adam(1e-2), elbo)
        state = svi.init(jax.random.PRNGKey(0), x)
        runs = {
            "one_device": (svi, state, x),
            "batch_sharded": (svi, replicate(state, mesh), x_sharded),
        }
        if kind == "go":
            # the 10 replays in chunks of 3, split 5 + 5 (one padding entry) over devices
            split = ShardedPerturbations(TraceGO_ELBO(chunk_size=3), mesh, "data")
            split_svi = SVI(vae.model, guide, numpyro.optim.Adam(1e-2), split)
            split_state = split_svi.init(jax.random.PRNGKey(0), x)
            runs["perturbations_sharded"] = (split_svi, split_state, x)
        final = {}
        for name, (svi_, state_, batch) in runs.items():
            update = jax.jit(svi_.update)
            for _ in range(steps):
                state_, _ = update(state_, batch)
            final[name] = svi.get_params(state_)
        for name in runs.keys() - {"one_device"}:
            report[f"{kind}_{name}"] = largest_difference(final["one_device"], final[name])
        report[f"{kind}_spread_over_devices"] = spread_over_devices(final["batch_sharded"])

    for key, value in report.items():
        # float32: sums over the batch are split differently over the devices
        limit = 0.0 if key.endswith("spread_over_devices") else 1e-5
        assert value <= limit, (key, value, report)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    import sys

    full = "--full" in sys.argv
    main(("go", "relax") if full else ("go",), steps=2 if full else 1)
