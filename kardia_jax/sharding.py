"""The sharding table: logical axis names (carried by every parameter) -> mesh axes.

A rules table is plain data, `((logical_name, mesh_axes), ...)`; trying a new
strategy is changing one mapping. Impossible placements raise (naming the tensor,
the logical axis and the mesh axis) instead of silently replicating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kardia_jax.errors import ConfigError

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# FSDP over `fsdp`, Megatron-style tensor parallelism over `tensor`; mesh axes that
# a mesh does not have are ignored, so these rules serve 1-D and 2-D meshes alike.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)


def _mesh_axes(rules: Rules, logical: str | None) -> tuple[str, ...]:
    if logical is None:
        return ()
    for name, target in rules:
        if name == logical:
            if target is None:
                return ()
            return (target,) if isinstance(target, str) else tuple(target)
    raise ConfigError(f"sharding rules have no entry for logical axis {logical!r}")


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
    name: str = "tensor",
) -> PartitionSpec:
    """PartitionSpec for one array; checks divisibility when `shape` is given."""
    spec, used = [], set()
    for i, logical in enumerate(logical_axes):
        axes = tuple(a for a in _mesh_axes(rules, logical) if a in mesh.shape and mesh.shape[a] > 1)
        for a in axes:
            if a in used:
                raise ConfigError(f"{name}: mesh axis {a!r} used twice (rules map it twice)")
            used.add(a)
        if shape is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[i] % size:
                raise ConfigError(
                    f"{name}: dimension {i} ({logical!r}, size {shape[i]}) is not divisible by "
                    f"mesh axes {axes} of total size {size}"
                )
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def batch_shards(mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways `rules` split the batch axis on `mesh` (1 without a mesh): the
    data-parallel size, which a batch's rows must divide by."""
    return 1 if mesh is None else shards_along(batch_sharding(mesh, rules, ndim=1))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """[batch, length, ...] arrays: batch split over the data-parallel axes (a spec
    shorter than the array leaves the trailing dimensions whole)."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def head_axes(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that split attention heads under `rules`."""
    return tuple(a for a in _mesh_axes(rules, "heads") if mesh.shape.get(a, 1) > 1)


def constrain(x, sharding):
    """`with_sharding_constraint`, or `x` as it is without a mesh (`sharding` None):
    the one form every compiled program uses to pin an intermediate's layout."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def constrain_cache(k, v, shardings):
    """Places key and value caches (pytrees of arrays) by a (keys, values) pair of
    shardings, as `sampling.state.cache_sharding` gives them; None leaves them."""
    if shardings is None:
        return k, v
    k_sharding, v_sharding = shardings
    return (
        jax.tree.map(lambda x: constrain(x, k_sharding), k),
        jax.tree.map(lambda x: constrain(x, v_sharding), v),
    )


def shards_along(sharding: NamedSharding, dim: int = 0) -> int:
    """How many pieces `sharding` cuts dimension `dim` of an array into."""
    spec = sharding.spec
    entry = spec[dim] if dim < len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(sharding.mesh.shape[a] for a in axes)


def param_shardings(model_or_state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for every parameter of a (possibly abstract) model, as a State."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)

    def one(path, var):
        axes = var.get_metadata().get("out_sharding") or (None,) * var.get_value().ndim
        name = ".".join(map(str, path))
        return var.replace(
            NamedSharding(mesh, logical_to_spec(axes, rules, mesh, var.get_value().shape, name))
        )

    flat = [(path, one(path, var)) for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)


def make_mesh(
    axis_sizes: dict[str, int], devices=None, dcn_axis_sizes: dict[str, int] | None = None
) -> Mesh:
    """A mesh with named axes; one size may be -1 (fill the remaining devices).

    Multi-slice (TPU pods joined over the data-centre network): `dcn_axis_sizes`
    says how many slices each axis spans (e.g. {"data": 2}); `axis_sizes` is then
    the layout within one slice, and devices are arranged so that only those axes
    cross the slow links.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = {a: int(dcn_axis_sizes.get(a, 1)) for a in axis_sizes} if dcn_axis_sizes else {}
    if any(v > 1 for v in dcn.values()):
        return _hybrid_mesh(axis_sizes, dcn, devices)
    sizes = dict(axis_sizes)
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ConfigError(f"mesh: only one axis may be -1, got {fill}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if len(devices) % known:
            raise ConfigError(f"mesh {axis_sizes}: {len(devices)} devices not divisible by {known}")
        sizes[fill[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(
            f"mesh {axis_sizes}: axis sizes multiply to {math.prod(sizes.values())}, "
            f"but there are {len(devices)} devices"
        )
    # Auto axes: placement is chosen by in/out shardings of jitted steps (GSPMD), the
    # model of the sharding table; explicit-mode typing would be a second mechanism.
    axis_types = (jax.sharding.AxisType.Auto,) * len(sizes)
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types, devices=devices)


def _hybrid_mesh(axis_sizes: dict[str, int], dcn: dict[str, int], devices) -> Mesh:
    from jax.experimental import mesh_utils

    slices = {getattr(d, "slice_index", None) for d in devices}
    n_slices = math.prod(dcn.values())
    if None in slices or len(slices) != n_slices:
        raise ConfigError(
            f"dcn_mesh {dcn}: asks for {n_slices} slices, but the devices form "
            f"{'no slices' if None in slices else len(slices)}"
        )
    per_slice = len(devices) // n_slices
    ici = make_mesh(axis_sizes, devices[:per_slice]).shape  # resolves -1 within a slice
    grid = mesh_utils.create_hybrid_device_mesh(
        tuple(ici.values()), tuple(dcn[a] for a in ici), devices
    )
    return Mesh(grid, tuple(ici), axis_types=(jax.sharding.AxisType.Auto,) * len(ici))


def fetch(tree):
    """`jax.device_get` that also reads arrays spread over several processes' devices
    (a batch-sharded output on a pod): those are gathered to every host, so every
    process must call it at the same point, as it does any collective."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)
