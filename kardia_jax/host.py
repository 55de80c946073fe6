"""Host-process settings that decide how fast XLA:CPU runs a step.

glibc's malloc hands large freed blocks (and the freed tops of XLA's per-thread
arenas) back to the kernel, and XLA:CPU allocates every program's temporaries per
call, so each step faulted its activations' pages in again, page by page. The main
heap's trim threshold has to exceed a step's temporaries (gigabytes), hence "never".
The measurements are in docs/benchmarks.md, "Host memory".

`keep_freed_memory()` makes the process keep what it frees (one arena, no mmap,
no trimming), as tcmalloc, the allocator of TPU VM images, does by design. The
cost is a larger resident size; `release_freed_memory()` (the pipeline, between
stages) and `HeapGuard` (the training loops) bound it. `KARDIA_JAX_MALLOC=system`
leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False
_libc = None


def keep_freed_memory() -> bool:
    """Tunes glibc malloc to reuse freed memory; True when the settings took.

    Call before the XLA backend starts its threads (the CLI does it first thing):
    a thread already bound to its own arena keeps it. A no-op off Linux, with
    another allocator preloaded (mallopt then configures an unused glibc heap,
    harmless) or with KARDIA_JAX_MALLOC=system.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("KARDIA_JAX_MALLOC") == "system":
        return False
    try:
        libc = _load_libc()
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_ARENA_MAX, 1),  # worker threads share the main heap, which is never trimmed...
        (_M_MMAP_MAX, 0),  # ...and never hands big blocks to mmap
        (_M_MMAP_THRESHOLD, 32 << 20),  # fixed: stops glibc's dynamic threshold adjustment
        (_M_TRIM_THRESHOLD, -1),  # glibc stores it as size_t: -1 is "never trim"
    )
    _applied = all(mallopt(param, value) == 1 for param, value in settings)
    return _applied


def release_freed_memory() -> None:
    """Hands the heap's free pages back to the kernel (malloc_trim), for the points
    where a process moves from one phase to another (the pipeline between stages):
    memory kept by `keep_freed_memory` is reused within a phase, but a later phase
    with other buffer sizes would otherwise add to it (about doubling the demo
    pipeline's peak resident size)."""
    if _applied:  # glibc, loaded by keep_freed_memory
        _load_libc().malloc_trim(0)


class HeapGuard:
    """Bounds what `keep_freed_memory` keeps: call once per training step; when the
    resident size has grown past `factor` x the working set (the size measured one
    step after a start or a trim), the free pages go back to the kernel.

    Kept memory is reused when a step asks for the same buffers again, but programs
    of different shapes (length buckets, held-out evaluation) and host copies
    (checkpoints) leave holes a later, larger request does not fit, and the
    resident size grows well past glibc's peak. A trim costs one step's page faults
    again, once.
    """

    def __init__(self, factor: float = 1.5):
        self.factor = factor
        self.trims = 0
        self._base = 0
        self._measure = True
        self._shapes = set()

    def __call__(self, shape=None) -> bool:
        """True when it trimmed. `shape`: the coming step's input shape; the first
        step of a new shape runs a new program whose buffers would not fit the holes
        the others left, so the free pages go back first (a step's temporaries then
        come from returned pages, not from pages on top of the kept ones)."""
        if not _applied:
            return False
        if shape is not None and shape not in self._shapes:
            self._shapes.add(shape)
            if len(self._shapes) > 1:
                return self._trim()
        rss = _rss_bytes()
        if self._measure:  # the working set: the first step after a start or a trim
            self._base, self._measure = max(self._base, rss), False
            return False
        return rss > self.factor * self._base and self._trim()

    def _trim(self) -> bool:
        release_freed_memory()
        self.trims += 1
        self._measure = True
        return True


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc
