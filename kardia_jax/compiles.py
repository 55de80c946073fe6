"""Counting XLA compilations, for every layer that promises a bounded number of
programs (the sampler's and the judge's buckets, a GRPO step after its first).

One listener on jax.monitoring's backend-compile event: it fires once per program XLA
really builds (persistent-cache hits included), whichever function asked for it, so
a count cannot miss a program the way a per-function trace counter would.
"""

from __future__ import annotations

import collections

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """XLA programs built by this process since this counter was created."""

    _total = 0
    _seconds = 0.0
    _by_name: collections.Counter = collections.Counter()
    _registered = False

    def __init__(self):
        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listen)
            CompileCounter._registered = True
        self._start = CompileCounter._total
        self._start_seconds = CompileCounter._seconds
        self._start_names = collections.Counter(CompileCounter._by_name)

    @staticmethod
    def _listen(event: str, duration: float, **kwargs) -> None:
        if event == _EVENT:
            CompileCounter._total += 1
            CompileCounter._seconds += duration
            CompileCounter._by_name[str(kwargs.get("fun_name", "?"))] += 1

    @property
    def count(self) -> int:
        return CompileCounter._total - self._start

    @property
    def seconds(self) -> float:
        """Time XLA spent building them."""
        return CompileCounter._seconds - self._start_seconds

    def by_name(self) -> dict[str, int]:
        """Programs built since creation, per jitted function's name."""
        return dict(CompileCounter._by_name - self._start_names)
