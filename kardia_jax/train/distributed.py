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


def global_max(value: int) -> int:
    """The largest `value` over all processes (a tiny collective; free on one host)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int32))))


def common_length(local: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Pads this host's batch to the longest length any host drew this step, so every
    process feeds the same global shape."""
    t = local["input_ids"].shape[1]
    longest = global_max(t)
    if longest == t:
        return local
    out = {}
    for k, v in local.items():
        fill = pad_id if k == "input_ids" else 0
        out[k] = np.pad(v, ((0, 0), (0, longest - t)), constant_values=fill)
    return out
