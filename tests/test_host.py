"""Host memory settings: freed memory stays resident (no page faults next time),
and HeapGuard hands it back once the process has grown past its working set."""

import sys

import pytest

from kardia_jax import host

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only"
)


_KEPT_AND_RELEASED = """
import numpy as np
from kardia_jax import host
assert host.keep_freed_memory()
assert host.keep_freed_memory()  # idempotent
guard = host.HeapGuard(factor=1.05)
assert not guard()  # measures the working set
base = host._rss_bytes()
size = 256 << 20
block = np.ones(size // 8)  # touched: resident
del block
kept = host._rss_bytes()
assert kept - base > 0.9 * size, (kept - base, size)  # freed, still resident
assert guard()  # grown past 1.05 x the working set: trimmed
assert host._rss_bytes() < kept - 0.9 * size
assert guard.trims == 1
"""


def test_freed_memory_is_kept_and_the_guard_releases_it():
    """In a fresh process: RSS is the whole process's, and a test worker that has
    compiled for a TPU topology before has libtpu's threads releasing memory of
    their own while this measures."""
    import subprocess

    run = subprocess.run(
        [sys.executable, "-c", _KEPT_AND_RELEASED], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_first_step_of_a_new_shape_releases_memory():
    guard = host.HeapGuard(factor=100.0)  # growth alone never trims here
    assert not guard(shape=(2, 256))  # the first shape: nothing to release
    assert not guard(shape=(2, 256))
    assert guard(shape=(2, 512))  # a new program's buffers: free pages go back first
    assert not guard(shape=(2, 256)) and not guard(shape=(2, 512))  # seen before
    assert guard.trims == 1
