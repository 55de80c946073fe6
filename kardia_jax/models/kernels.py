"""Which form of each kernel a program compiles, chosen for the devices that run it.

A model config's `kernels` is "auto" until it meets a mesh: `resolve` then fixes it
from the mesh's devices, so a program compiled for TPU devices in a process whose
default backend is the CPU (compile-check on a topology) gets the TPU forms. It is a
config field, hence static in the graphdef: programs for different targets never
share a jit cache entry.

- "cpu": the forms XLA:CPU runs fastest (`cpu_matmul` projections, a transposed key
  cache, an f32 cache for a bf16 model, a multiply-reduce decode head);
- "xla": plain XLA forms (GPUs and any other backend);
- "tpu": the XLA forms plus Pallas TPU kernels (splash attention).
"""

from __future__ import annotations

import jax


def for_platform(platform: str) -> str:
    return {"cpu": "cpu", "tpu": "tpu"}.get(platform, "xla")


def platform_of(mesh=None) -> str:
    """The platform of the mesh's devices (without a mesh, of the devices this
    process runs models on)."""
    devices = mesh.devices.flat if mesh is not None else jax.devices()
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"devices of several platforms {sorted(platforms)} in one mesh")
    return platforms.pop()


def of(kernels: str, mesh=None) -> str:
    """A config's `kernels` value, "auto" resolved for `mesh` (see `platform_of`)."""
    return for_platform(platform_of(mesh)) if kernels == "auto" else kernels


def resolve(cfg, mesh=None):
    """`cfg` with `kernels` fixed: kept when set explicitly, else from the devices."""
    return cfg if cfg.kernels != "auto" else cfg.replace(kernels=of("auto", mesh))
