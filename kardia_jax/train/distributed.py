"""Multi-process plumbing: `jax.distributed` start-up and turning each host's slice
of a batch into one global array."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding


def maybe_initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a multi-process run. On TPU pods `jax.distributed.initialize()` reads the
    topology itself (KARDIA_JAX_DISTRIBUTED=1 or `--distributed` asks for it); on CPU
    (tests) the coordinator, process count and id are given explicitly and the
    collectives go through gloo."""
    explicit = coordinator is not None
    if not explicit and os.environ.get("KARDIA_JAX_DISTRIBUTED", "") not in ("1", "true"):
        return
    if jax.distributed.is_initialized():
        return
    # Only affects the CPU client; must be set before any backend starts, so it is
    # set unconditionally rather than after asking which backend is in use.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Each process passes its own rows; the result is one array over all of them."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def host_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous block of rows of a global batch (process p's devices
    hold rows [p * B / P, (p + 1) * B / P) of a batch-sharded array)."""
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    rows = next(iter(batch.values())).shape[0] // n
    return {k: v[p * rows : (p + 1) * rows] for k, v in batch.items()}
