"""The sampler's state as pytrees: the KV cache and the decode-loop state.

Every length and position is an array, not a Python int, so one compiled program
serves every prompt length within a bucket and every decode step (gemma's
`SamplingState`); the state is donated to each decode call and updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from kardia_jax.sharding import DEFAULT_RULES, Rules, logical_to_spec

# Finish reasons, as stored in `SamplingState.reason`.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
REASONS = {RUNNING: "running", EOS: "eos", STOP: "stop", LENGTH: "length"}

# Logical axes of one layer's cache (see kardia_jax.sharding): rows follow the batch
# sharding, kv heads the tensor-parallel sharding of k_proj / v_proj.
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


@struct.dataclass
class KVCache:
    """Keys and values of every layer, kv-head-major ([B, K, S, H] per layer, the
    layout attention contracts without a transpose): a tuple of L arrays for an
    unrolled model, one stacked [L, B, K, S, H] array for a scanned one (see
    `Transformer.forward_with_cache`).

    Prompts are left-padded to a common length P, so every row writes slot `index`
    at the same step; a row's real tokens are the slots >= `start`.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    start: jax.Array  # [B] int32: first real slot (left padding before it)
    index: jax.Array  # [] int32: next slot to write
    positions: jax.Array  # [B] int32: rope position of the next token

    @property
    def num_slots(self) -> int:
        return jax.tree.leaves(self.k)[0].shape[-2]

    @property
    def kv_mask(self):
        """[B, S] int32: slots that can hold a real token; causality (slot <= the
        query's) is added by `attention_mask`'s `q_offset`."""
        slots = jnp.arange(self.num_slots)[None, :]
        return (slots >= self.start[:, None]).astype(jnp.int32)


@struct.dataclass
class SamplingState:
    """Everything the decode loop carries. Rows are prompt-major: row i * G + g is
    sample g of prompt i."""

    cache: KVCache
    tokens: jax.Array  # [B, N] int32 completion tokens (pad after a row ends)
    logprobs: jax.Array  # [B, N] f32 log-probs at the sampling temperature (0 after end)
    step: jax.Array  # [] int32: tokens generated so far (tokens[:, :step] are final)
    done: jax.Array  # [B] bool
    reason: jax.Array  # [B] int32, one of RUNNING / EOS / STOP / LENGTH
    lengths: jax.Array  # [B] int32 completion tokens, the stop token included
    key: jax.Array  # PRNG key of the call; step t draws with fold_in(key, t)
    eos_ids: jax.Array  # [E] int32, padded with -1
    stop_ids: jax.Array  # [E'] int32, padded with -1
    max_new: jax.Array  # [] int32 generation budget (<= N, the bucketed buffer size)


def cache_sharding(mesh, rules: Rules = DEFAULT_RULES, shape=None, stacked: bool = False):
    """NamedSharding of one cache array on `mesh` (None without a mesh): [B, K, S, H],
    or [L, B, K, S, H] when `stacked`."""
    if mesh is None:
        return None
    axes = (("layers",) if stacked else ()) + CACHE_AXES
    spec = logical_to_spec(axes, rules, mesh, shape, name="kv cache")
    return jax.sharding.NamedSharding(mesh, spec)


def batch_shards(mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the batch axis is split on `mesh` (rows must divide by it)."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), rules, mesh)
    axes = spec[0] or ()
    axes = (axes,) if isinstance(axes, str) else axes
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    return n
