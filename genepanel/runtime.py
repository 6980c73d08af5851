"""Devices, the one-axis data mesh, shardings and multi-process start-up.

This is the only module that knows about processes. Parameters are replicated and
minibatches sharded along the mesh axis ``"data"``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genepanel.errors import UsageError

AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` (default: all devices)."""
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs, (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimiser state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (sample) axis over the ``data`` axis."""
    return NamedSharding(mesh, P(AXIS))


def valid_batch_sizes(n_devices: int, around: int, how_many: int = 3) -> list[int]:
    """Multiples of ``n_devices`` nearest to ``around``."""
    base = max(n_devices, (around // n_devices) * n_devices)
    cands = {base, base + n_devices, max(n_devices, base - n_devices)}
    return sorted(cands)[:how_many]


def check_batch_size(batch_size: int, n_devices: int) -> None:
    """Raise :class:`UsageError` unless the global batch splits evenly over the devices."""
    if batch_size % n_devices:
        sizes = ", ".join(map(str, valid_batch_sizes(n_devices, batch_size)))
        msg = (
            f"--batch-size {batch_size} does not split evenly over {n_devices} devices; "
            f"use a multiple of {n_devices} (e.g. {sizes})"
        )
        raise UsageError(msg)


def is_main_process() -> bool:
    """Whether this process writes outputs (process 0)."""
    return jax.process_index() == 0


def maybe_initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` when asked to or when running under SLURM with >1 task.

    Returns whether a multi-process run was started. Must run before any other JAX call.
    """
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    if not explicit and not slurm:
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        msg = (
            "multi-process runs need all of --coordinator HOST:PORT, --num-processes N "
            "and --process-id I (or run under SLURM, which sets them)"
        )
        raise UsageError(msg)
    if explicit:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    else:
        jax.distributed.initialize()
    return True
