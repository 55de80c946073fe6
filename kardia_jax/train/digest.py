"""A checksum of a train state that does not depend on how it is sharded: saved with
each checkpoint and compared after a restore, so damaged array bytes that still
decode (orbax reads them back without complaint) make the checkpoint unreadable
instead of silently wrong weights.

Per leaf, two sums of its bit patterns as uint32, wrapping: a plain one and one
weighted by each element's odd-numbered global position (so swapped or shifted
values show too). Wrapping addition is associative and commutative, so the sums are
exact and the same however the leaf is laid out over devices and hosts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _flat(tree) -> tuple[list[str], list]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = ["/".join(_key(k) for k in path) for path, _ in leaves]
    return names, [x for _, x in leaves]


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _bits(x: jax.Array) -> jax.Array:
    """The leaf's bit patterns as uint32 (narrower types widened, bool as 0/1)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize * 8
    if width == 64:  # two words per element (jax_enable_x64 only)
        x = jax.lax.bitcast_convert_type(x, jnp.uint32)
        return x
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _sums(x: jax.Array) -> jax.Array:
    bits = _bits(x)
    position = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(bits.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d)
        position = position + iota * jnp.uint32(stride % 2**32)
        stride *= bits.shape[d]
    weight = position * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


@jax.jit
def _all_sums(leaves):
    return [_sums(x) for x in leaves]


def state_digest(tree) -> dict[str, list[int]]:
    """{leaf path: [sum, weighted sum]} of a pytree of arrays, on every process."""
    names, leaves = _flat(tree)
    sums = jax.device_get(_all_sums(leaves))
    return {n: [int(v) for v in np.asarray(s)] for n, s in zip(names, sums, strict=True)}


def digest_mismatch(saved: dict, actual: dict) -> list[str]:
    """The leaves whose sums differ (or that only one side has)."""
    out = [k for k in saved.keys() & actual.keys() if list(saved[k]) != list(actual[k])]
    out += [k for k in saved.keys() ^ actual.keys()]
    return sorted(out)
