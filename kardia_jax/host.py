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

`quiet_cpu_host()` is the other start-up setting: with libtpu installed (the `tpu`
extra, for compile-only TPU topologies) on a machine with no TPU, it keeps jax and
libtpu from probing for chips that are not there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
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


# PCI ids of TPU chips (vendor Google), as jax's own probe lists them
# (jax/_src/hardware_utils.py); a chip newer than this table still shows as
# /dev/accel* or a VFIO group.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
# Device nodes of a GPU that jax could use (jax's has_visible_nvidia_gpu, and AMD's KFD).
_GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")

# What libtpu asks a cloud metadata server for when it loads; without them it prints
# "could not determine TPU accelerator type / worker hostnames" and an InitGoogle
# error. On a host with no chips they describe nothing: a compile-only topology
# (get_topology_desc("v5p:2x2x2")) brings its own chips, and its compiled programs
# are the same with or without them.
_LIBTPU_HOST_ENV = {
    "TPU_ACCELERATOR_TYPE": "v5litepod-1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    # libtpu's lockfile gives one process a machine's chips; with no chips it only
    # stops a second compile-only process (two compile-checks, two test workers).
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def quiet_cpu_host(environ=None) -> dict[str, str]:
    """With libtpu installed and no TPU attached, sets the environment jax and libtpu
    read at start-up; returns what it set. Call before jax is imported.

    jax's default platform list tries the TPU backend at first use whenever libtpu
    is installed: libtpu loads, takes its lockfile, prints metadata warnings and
    fails with "No jellyfish device found". Here JAX_PLATFORMS defaults to cpu
    (unless a GPU is visible, whose backend jax must still find), and libtpu gets
    `_LIBTPU_HOST_ENV` for the topologies compile-check builds. Every variable the
    user set is kept (JAX_PLATFORMS=tpu still fails loudly on a CPU host), and on a
    machine with a TPU, or without libtpu, nothing is set.
    """
    env = os.environ if environ is None else environ
    if not _libtpu_installed(env) or tpu_attached():
        return {}
    wanted = dict(_LIBTPU_HOST_ENV)
    if not any(os.path.exists(node) for node in _GPU_DEVICE_NODES):
        wanted["JAX_PLATFORMS"] = "cpu"
    applied = {k: v for k, v in wanted.items() if k not in env}
    env.update(applied)
    return applied


def tpu_attached() -> bool:
    """True when this machine has TPU chips, found without loading jax or libtpu:
    a Google TPU PCI device, an accel device node (TPU v2 to v5p) or a VFIO group
    (v5e and newer expose their chips through VFIO)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        device_path = os.path.join(os.path.dirname(vendor_path), "device")
        try:
            with open(vendor_path) as v, open(device_path) as d:
                if v.read().strip() == _GOOGLE_PCI_VENDOR and d.read().strip() in _TPU_PCI_DEVICES:
                    return True
        except OSError:
            continue
    return False


def _libtpu_installed(env) -> bool:
    path = env.get("TPU_LIBRARY_PATH")
    return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


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
