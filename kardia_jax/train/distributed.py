"""Multi-process plumbing: `jax.distributed` start-up, turning each host's slice of a
batch into one global array, and how the processes of a run agree: one writer per
file, barriers before a file is read, and one error that stops every process.

What happens when a process fails:

- At an agreement point (`agreed`: preflight, the end of each pipeline stage) every
  process learns the failure and raises the same error, so all print one line and
  exit 2 together.
- Inside a stage (between collectives) the failing process prints its error and ends
  at once (`leave`) instead of waiting for the others at jax's shutdown barrier. Its
  peers' next collective then fails: at once on CPU (gloo sees the connection close),
  and on TPU when jax's coordination service misses its heartbeats
  (`jax.distributed.initialize(heartbeat_timeout_seconds=100)`, jax's default), which
  ends them with "the JAX distributed service detected fatal errors". A process
  that exits normally while its peers still run waits at the shutdown barrier for up
  to `shutdown_timeout_seconds` (300 s) first: hence `leave`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding

from kardia_jax import errors
from kardia_jax.errors import ConfigError, KardiaError

ERROR_BYTES = 4096  # an error message as the processes exchange it (longer ones are cut)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that can run on several processes (`kardia_jax/cli.py`
    joins the run before the command starts any JAX backend)."""
    parser.add_argument(
        "--coordinator", default=None, help="host:port of process 0 (multi-process)"
    )
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)


def maybe_initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a multi-process run. On TPU pods `jax.distributed.initialize()` reads the
    topology itself (KARDIA_JAX_DISTRIBUTED=1 or `--distributed` asks for it); on CPU
    (tests) the coordinator, process count and id are given explicitly and the
    collectives go through gloo. Must run before anything starts a JAX backend:
    jax refuses to join afterwards."""
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


def is_main() -> bool:
    """Process 0: the one process that writes each shared file."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op on one process): placed after
    process 0 writes a file and before another process reads it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(value: np.ndarray) -> np.ndarray:
    """[processes, ...]: every process's `value` (same shape and dtype on each), on
    every process."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value))


def same_everywhere(value: int, what: str) -> None:
    """Raises the same `ConfigError` on every process when they see different values
    of `value` (e.g. the rows of a file in a workdir that is not one shared folder)."""
    seen = gather(np.int64(value)).reshape(-1).tolist()
    if len(set(seen)) > 1:
        per = ", ".join(f"process {p}: {v}" for p, v in enumerate(seen))
        raise ConfigError(
            f"{what} differs between processes ({per}): the workdir must be one folder "
            "that every host sees (gcsfuse, NFS)"
        )


def _encode(error: BaseException | None) -> np.ndarray:
    out = np.zeros(ERROR_BYTES, np.uint8)
    if error is None:
        return out
    kind = type(error).__name__ if isinstance(error, KardiaError) else ""
    text = f"{kind}\n{type(error).__name__}: {error}" if not kind else f"{kind}\n{error}"
    raw = text.encode("utf-8")[: ERROR_BYTES - 1]
    out[0] = 1
    out[1 : 1 + len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _decode(row: np.ndarray) -> tuple[str, str]:
    text = bytes(row[1:]).rstrip(b"\0").decode("utf-8", errors="replace")
    kind, _, message = text.partition("\n")
    return kind, message


@contextlib.contextmanager
def agreed():
    """Runs the block on every process, then the processes compare outcomes: when
    any failed, every one raises the first failing process's error (its class and
    message, naming the process when not all failed), so all stop with one line.

    The block must start no collective: a process that fails before one would leave
    the others waiting in it. On one process it is the block alone."""
    if jax.process_count() == 1:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as e:  # a bug on one host must not leave the others waiting
        error = e
    rows = gather(_encode(error))
    failed = [p for p in range(len(rows)) if rows[p][0]]
    if not failed:
        return
    first = failed[0]
    kind, message = _decode(rows[first])
    if error is not None and first == jax.process_index() and not kind:
        error.agreed = True  # the others raise theirs now too
        raise error  # this host's own bug: its traceback is what to read
    same = len(failed) == len(rows) and all(_decode(rows[p]) == (kind, message) for p in failed)
    if not same:
        message = f"process {first} of {len(rows)}: {message}"
    cls = getattr(errors, kind, None) if kind else None
    if not (isinstance(cls, type) and issubclass(cls, KardiaError)):
        cls = KardiaError
    raised = cls(message)
    raised.agreed = True  # every process raises it here: each may end normally (`leave`)
    raise raised from None


def leave(code: int) -> None:
    """Ends this process now, its output flushed, without jax's shutdown barrier
    (which would hold a process that failed alone for `shutdown_timeout_seconds`
    while its peers wait in a collective): see the module docstring."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
