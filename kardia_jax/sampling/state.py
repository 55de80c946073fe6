"""The sampler's state as pytrees: the KV cache and the decode-loop state.

Every length and position is an array, not a Python int, so one compiled program
serves every prompt length within a bucket and every decode step (gemma's
`SamplingState`); the state is donated to each decode call and updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from kardia_jax.models import kernels
from kardia_jax.models.decoder import cache_axes, cache_shapes
from kardia_jax.sharding import Rules, logical_to_spec

# Finish reasons, as stored in `SamplingState.reason`.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
REASONS = {RUNNING: "running", EOS: "eos", STOP: "stop", LENGTH: "length"}


@struct.dataclass
class KVCache:
    """Keys and values of every layer in `decoder.cache_for_decode`'s layout
    (`decoder.cache_shapes`: values [B, K, S, H], keys the same or transposed); a
    tuple of L arrays for an unrolled model, one stacked [L, ...] array for a
    scanned one. Sliding layers whose window is shorter than the S slots keep a
    ring of window slots instead (scanned, the two kinds then are two stacks).

    Prompts are left-padded to a common length P, so every row writes slot `index`
    at the same step; a row's real tokens are the slots >= `start`.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    start: jax.Array  # [B] int32: first real slot (left padding before it)
    index: jax.Array  # [] int32: next slot to write
    positions: jax.Array  # [B] int32: rope position of the next token
    # S, the absolute slots (prompt + budget); static: a ring layer holds fewer.
    num_slots: int = struct.field(pytree_node=False)

    @property
    def kv_mask(self):
        """[B, S] int32: slots that can hold a real token; causality (slot <= the
        query's) is added by `attention_mask`'s `q_offset`."""
        slots = jnp.arange(self.num_slots)[None, :]
        return (slots >= self.start[:, None]).astype(jnp.int32)


@struct.dataclass
class SamplingState:
    """Everything the decode loop carries. Rows are prompt-major: row i * G + g is
    sample g of prompt i, until compaction (`loop.compact`) drops finished rows;
    `rows` keeps each row's index in the call through that."""

    cache: KVCache
    tokens: jax.Array  # [B, N] int32 completion tokens (pad after a row ends)
    logprobs: jax.Array  # [B, N] f32 log-probs at the sampling temperature (0 after end)
    step: jax.Array  # [] int32: tokens generated so far (tokens[:, :step] are final)
    done: jax.Array  # [B] bool
    reason: jax.Array  # [B] int32, one of RUNNING / EOS / STOP / LENGTH
    lengths: jax.Array  # [B] int32 completion tokens, the stop token included
    # [B] int32: each row's index in the call (prompt i, sample g -> i * G + g; rows
    # that only pad the batch hold any id). Row r draws step t from
    # fold_in(fold_in(key, r), t), so its tokens do not depend on its batch.
    rows: jax.Array
    key: jax.Array  # PRNG key of the call
    eos_ids: jax.Array  # [E] int32, padded with -1
    stop_ids: jax.Array  # [E'] int32, padded with -1
    max_new: jax.Array  # [] int32 generation budget (<= N, the bucketed buffer size)


def default_cache_dtype(model_dtype: str, kernel_forms: str = "auto") -> str:
    """The KV cache's dtype for a model computing in `model_dtype` with kernels
    `kernel_forms` (its config's `kernels`): the same, except bf16 with CPU kernels,
    which gets float32. XLA:CPU has no bf16 element-wise kernels: it
    writes a decode step's keys into a bf16 cache by converting the whole cache to
    f32 and back, for every layer at every step, which costs more than the bf16
    projections save (docs/benchmarks.md, "Sampler"). Attention then contracts the
    f32 cache in f32 (`layers.cached_attention`)."""
    if jnp.dtype(model_dtype) == jnp.bfloat16 and kernels.of(kernel_forms) == "cpu":
        return "float32"
    return str(jnp.dtype(model_dtype))


def cache_sharding(mesh, rules: Rules, cfg, rows: int, slots: int):
    """NamedShardings (keys, values) of the KV cache arrays of a model with config
    `cfg` (shapes from `decoder.cache_shapes`) on `mesh`; None without a mesh."""
    if mesh is None:
        return None
    lead = ("layers",) if cfg.scan_layers else ()
    k_shape, v_shape = cache_shapes(cfg, rows, slots)
    k_axes, v_axes = cache_axes(cfg)
    k = logical_to_spec(lead + k_axes, rules, mesh, k_shape, name="key cache")
    v = logical_to_spec(lead + v_axes, rules, mesh, v_shape, name="value cache")
    return jax.sharding.NamedSharding(mesh, k), jax.sharding.NamedSharding(mesh, v)
