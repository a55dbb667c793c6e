"""Data parallelism with `jax.sharding`: a one-axis device mesh, the batch sharded, everything else replicated.

Because each example's randomness is keyed by its index in the split (`objective.map_examples`), an example
computes the same numbers on whichever device it lands, and data-parallel training follows the single-device
trajectory up to the order of the gradient's summation.

Multi-host (TPU pods, GPU clusters): start the same command on every host with `--distributed`, which calls
`jax.distributed.initialize()` (it finds the coordinator, process count and process id in the cluster's
environment: Cloud TPU, SLURM, Open MPI; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
`jax.devices()` then lists every host's devices, the mesh spans them all, and each host feeds the same
replicated dataset; `batch_size` is the global batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax.errors import ConfigError, first_line

DATA_AXIS = "data"


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named `data` over `devices` (default: every device of every process)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def check_divisible(mesh: Mesh, **batch_sizes: int) -> None:
    """Raises `ConfigError` unless every given batch size splits evenly over the mesh's devices."""
    for name, size in batch_sizes.items():
        if size % mesh.size:
            raise ConfigError(f"{name}={size} does not split over {mesh.size} devices; use a multiple of {mesh.size}")


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside jit: constrains the leading (batch) axis of every array in `tree` to be split over the mesh."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Places every array of `tree` on all devices of the mesh (on the default device without one)."""
    if mesh is None:
        return jax.device_put(tree)
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(leaf: Any) -> jax.Array:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.device_put(leaf, sharding)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def initialize_distributed() -> None:
    """Joins a multi-host run (`jax.distributed.initialize`); call before any other JAX work.

    JAX finds the coordinator, process count and process id itself on Cloud TPU, SLURM and Open MPI; elsewhere
    set JAX_COORDINATOR_ADDRESS (which JAX reads) and JAX_NUM_PROCESSES and JAX_PROCESS_ID (which we pass on).
    """
    counts = {name: int(os.environ[var]) for name, var in
              (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")) if var in os.environ}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs and TPUs ignore it
    try:
        jax.distributed.initialize(**counts)
    except (RuntimeError, ValueError) as error:
        reason = first_line(error)
        raise ConfigError(f"cannot join a multi-host run ({reason}); set JAX_COORDINATOR_ADDRESS, "
                          "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run without --distributed") from None
