"""Preemption agreed by every process: a SIGTERM to any one of them makes all of them
stop at the same step, where the driver saves (SFT, GRPO) or has finished writing its
batch (eval), and each exits 0 naming that step.

On several processes this is jax's preemption service (the call orbax's
`CheckpointManager.reached_preemption` makes): jax.distributed installs a SIGTERM
handler in each process, a notice on one reaches the others through the coordination
service, and they agree in the background on the step after the furthest one any has
reached, so the per-step check is a local comparison, with no collective and no host
sync. On one process a Python SIGTERM handler sets the flag.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

from kardia_jax.errors import Preempted

__all__ = ["Preempted", "Preemption"]

# Every check of this process, across stages: jax's service needs a sequence that
# only grows and that every process walks through in step (a pipeline runs SFT, then
# GRPO, then eval in one process, each counting its steps from its own start).
_calls = 0


def _uses_service() -> bool:
    """Whether jax's preemption service runs: several processes joined by
    jax.distributed, with the service on (`jax_enable_preemption_service`, the default)."""
    return (
        jax.process_count() > 1
        and jax.distributed.is_initialized()
        and bool(jax.config.jax_enable_preemption_service)
    )


class Preemption:
    """`reached()` at the same point of every step, on every process: True on all of
    them at the same call once any one has been sent SIGTERM. `install()` (or `with`)
    before the loop, `restore()` after it: the previous SIGTERM handler comes back."""

    def __init__(self):
        self._requested = False
        self._service = False
        self._old = None

    def __enter__(self) -> Preemption:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def install(self) -> Preemption:
        self._service = _uses_service()
        if not self._service:
            # One process (or jax's service switched off): our handler. On several
            # processes jax's own handler must stay: replacing it would hide the notice.
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handle(self, signum, frame) -> None:
        self._requested = True

    def reached(self) -> bool:
        global _calls
        _calls += 1
        if self._service:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(_calls))
        if jax.process_count() == 1:
            return self._requested
        # Several processes without jax's service: every one shares its flag (a
        # collective at each check, hence the service when it is there).
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self._requested))
        return bool(np.max(flags))
