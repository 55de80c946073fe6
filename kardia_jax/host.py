"""Host-process settings that decide how fast XLA:CPU runs a step.

glibc's malloc serves a request above its mmap threshold (dynamic, capped at 32 MiB)
with a fresh `mmap` and returns it to the kernel on `free`; allocations made by
XLA's worker threads land in per-thread arenas whose freed tops are trimmed the
same way. XLA:CPU allocates every program's temporaries and outputs per call, so
each step touched its activations' pages for the first time again: a page fault
per 4 KiB. Measured on this project's 2-core CPU: `x + 1` over 38 MB ran at
5.9 GB/s with 9,217 faults per call, 44 GB/s with none once memory was kept. An
SFT step of the Qwen2.5-0.5B shape (1 x 512 tokens, one core) took 1.78 million
faults and 5.0 s of kernel time per step (14.1 s in all); with memory kept, none
and 8.9 s. The main heap's trim threshold has to exceed a step's temporaries
(gigabytes), hence "never" rather than mallopt's largest int (2 GiB), which
still let 1.37 million faults through per SmolLM2-135M step.

`keep_freed_memory()` makes the process keep what it frees (one arena, no mmap,
no trimming), as tcmalloc, the allocator of TPU VM images, does by design. The
cost is that the resident size stays at its peak instead of shrinking between
steps. `KARDIA_JAX_MALLOC=system` leaves glibc's defaults alone.
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
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
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
