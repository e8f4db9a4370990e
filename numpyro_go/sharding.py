"""Data-parallel SVI over devices with :mod:`jax.sharding`, and the perturbation axis of
``D_y f`` split over devices.

**Data parallelism** needs no change to the estimators: put the batch on a mesh
sharded along its first axis (:func:`shard_batch`) and SVI's state replicated
(:func:`replicate`), and ``jax.jit`` (inside :meth:`numpyro.infer.SVI.update`) partitions
the whole step, model, guide and the ``vmap`` over perturbations alike, and sums the
gradient over devices.  JAX's partitionable threefry (``jax_threefry_partitionable``,
the default since JAX 0.5) draws the same samples for a sharded batch as for the whole
batch on one device, so the gradients are those of one device on the union batch.

**Perturbation sharding** is for models with many discrete latents and small batches:
with :class:`ShardedPerturbations` around it, :class:`~numpyro_go.TraceGO_ELBO`
evaluates the stack of ``1 + #perturbations`` model replays of each discrete leaf site
(Cong et al. 2019, appendix I) as one row per device (padded with copies of the
unperturbed entry to a multiple of the device count), the rows split over the devices
by a sharding constraint, so that XLA's partitioner gives each device its row; each row
runs in chunks of the ELBO's ``chunk_size``.  The gradients are the same as without it;
only where the replays run changes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from numpyro.infer.elbo import ELBO

_PERTURBATION_AXIS: list[tuple[Mesh, str]] = []


def shard_batch(tree, mesh: Mesh, axis: str = "data"):
    """``tree``'s arrays on ``mesh``, split along their first dim over ``axis``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(axis)))


def replicate(tree, mesh: Mesh):
    """``tree``'s arrays (e.g. an ``SVIState``) replicated on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


class ShardedPerturbations(ELBO):
    """``elbo`` with each discrete leaf site's perturbation stack split over the devices
    of ``mesh`` along ``axis`` whenever its loss is traced (pass it to ``SVI`` in place
    of ``elbo``).  Attributes not defined here are ``elbo``'s.

    :param elbo: a :class:`~numpyro_go.TraceGO_ELBO`.
    :param mesh: a :class:`jax.sharding.Mesh`.
    :param axis: the mesh axis to split the stacks over.
    """

    can_infer_discrete = True

    def __init__(self, elbo: ELBO, mesh: Mesh, axis: str) -> None:
        if axis not in mesh.axis_names:
            raise ValueError(
                f"ShardedPerturbations: the mesh has axes {mesh.axis_names}, not {axis!r}"
            )
        super().__init__(num_particles=elbo.num_particles)
        self.elbo, self.mesh, self.axis = elbo, mesh, axis

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        _PERTURBATION_AXIS.append((self.mesh, self.axis))
        try:
            return self.elbo.loss_with_mutable_state(
                rng_key, param_map, model, guide, *args, **kwargs
            )
        finally:
            _PERTURBATION_AXIS.pop()

    def __getattr__(self, name: str):
        if name == "elbo":  # not set yet: no recursion while unpickling
            raise AttributeError(name)
        return getattr(self.elbo, name)


def perturbation_axis() -> tuple[Mesh, str] | None:
    """The ``(mesh, axis)`` of the :class:`ShardedPerturbations` whose loss is being
    traced, if any."""
    return _PERTURBATION_AXIS[-1] if _PERTURBATION_AXIS else None


def map_sharded(
    fn: Callable[[jax.Array], jax.Array],
    entries: jax.Array,
    mesh: Mesh,
    axis: str,
    chunk_size: int | None,
) -> jax.Array:
    """``jax.vmap(fn)(entries)`` with ``entries`` split over ``axis`` of ``mesh``; each
    device maps its slice in chunks of ``chunk_size`` (``None``: all at once).  Padding
    entries repeat ``entries[0]``; their results are dropped."""
    count = entries.shape[0]
    devices = mesh.shape[axis]
    padding = -count % devices
    padded = jnp.concatenate([entries, jnp.broadcast_to(entries[:1], (padding,))])

    # one row per device, the rows split over ``axis``: the partitioner gives each
    # device its row's replays (the values ``fn`` closes over stay where they are)
    rows = jax.lax.with_sharding_constraint(
        padded.reshape(devices, -1), NamedSharding(mesh, PartitionSpec(axis))
    )

    def row(block: jax.Array) -> jax.Array:
        if chunk_size is None or chunk_size >= block.shape[0]:
            return jax.vmap(fn)(block)
        return jax.lax.map(fn, block, batch_size=chunk_size)

    out = jax.vmap(row)(rows)
    out = jax.lax.with_sharding_constraint(out, NamedSharding(mesh, PartitionSpec(axis)))
    return out.reshape((-1, *out.shape[2:]))[:count]
