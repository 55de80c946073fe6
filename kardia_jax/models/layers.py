"""Building blocks of the decoder: dense projections, RMSNorm, rotary embeddings,
grouped-query attention (causal, optionally windowed and soft-capped) and the gated
MLP (SwiGLU, or Gemma's GeGLU).

Dimension alphabet used in names and einsums throughout `models/`:
  B batch, T query length, S key length, D embed (hidden), N query heads,
  K key/value heads, G query heads per kv head (N = K * G), H head dim,
  F mlp hidden, V vocab, L layers.

Dtype policy: parameters are stored in `param_dtype`; matmuls run in the compute
`dtype`; RMSNorm, rotary angles, attention softmax and final logits run in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.models import cpu_matmul, kernels
from kardia_jax.models.config import ModelConfig

_INIT_STD = 0.02  # transformers' initializer_range for these families


def param(rngs: nnx.Rngs, init, shape, axes: Sequence[str], dtype) -> nnx.Param:
    """A parameter tagged with logical axis names for the sharding table.

    Flax's eager sharding is off: placement is decided once, by the rules table,
    when the state is created or loaded under a mesh (see `kardia_jax.sharding`).
    """
    assert len(axes) == len(shape), (shape, axes)
    value = init(rngs.params(), tuple(shape), jnp.dtype(dtype))
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def _normal(key, shape, dtype):
    return (_INIT_STD * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _zeros(key, shape, dtype):
    del key
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype):
    del key
    return jnp.ones(shape, dtype)


def _lead(x, ndim: int):
    """Adds leading unit dims for an explicit broadcast (tests raise on rank promotion)."""
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


class Dense(nnx.Module):
    """y = x . kernel (+ bias), contracting the last len(in_shape) dims of x.

    Kernels keep multi-dim shapes (e.g. q_proj is [D, N, H]) so each dim carries its
    own logical axis name; the checkpoint map reshapes Hugging Face's 2-D weights.
    """

    def __init__(self, in_shape, out_shape, axes, *, bias: bool, cfg: ModelConfig, rngs):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        self.n_in = len(in_shape)
        self.dtype = cfg.dtype
        self.kernels = cfg.kernels
        self.kernel = param(rngs, _normal, in_shape + out_shape, axes, cfg.param_dtype)
        self.bias = (
            param(rngs, _zeros, out_shape, axes[self.n_in :], cfg.param_dtype) if bias else None
        )

    def __call__(self, x, out_dtype=None):
        dtype = jnp.dtype(self.dtype)
        kernel = self.kernel[...]
        if kernels.of(self.kernels) == "cpu":
            y = cpu_matmul.matmul(x, kernel, self.n_in, dtype, jnp.dtype(out_dtype or dtype))
        else:
            y = jnp.tensordot(
                x.astype(dtype),
                kernel.astype(dtype),
                axes=self.n_in,
                preferred_element_type=out_dtype or dtype,
            )
        if self.bias is not None:
            y = y + _lead(self.bias[...].astype(y.dtype), y.ndim)
        return y


class Embed(nnx.Module):
    """Token embedding table [V, D]; also the output projection when tied.

    Gemma (`scale_embeddings`) multiplies the looked-up rows by sqrt(D) rounded to the
    compute dtype, as transformers rounds it to the weights' dtype (sqrt(3072) is
    55.5 in bf16, not 55.43): the trained checkpoints expect the rounded factor.
    """

    def __init__(self, vocab: int, dim: int, *, cfg: ModelConfig, rngs):
        self.dtype = cfg.dtype
        self.scale = float(np.float32(math.sqrt(dim))) if cfg.scale_embeddings else None
        self.embedding = param(rngs, _normal, (vocab, dim), ("vocab", "embed"), cfg.param_dtype)

    def __call__(self, ids_BT):
        x = jnp.take(self.embedding[...], ids_BT, axis=0).astype(self.dtype)
        if self.scale is not None:
            x = x * jnp.asarray(self.scale, jnp.float32).astype(self.dtype)
        return x


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, cast back to the compute dtype. With
    `cfg.norm_plus_one` (Gemma) the weight is stored as an offset from 1: the norm
    multiplies by (1 + weight), and a fresh weight is 0."""

    def __init__(self, dim: int, axis: str, *, cfg: ModelConfig, rngs, eps: float | None = None):
        self.eps = cfg.rms_norm_eps if eps is None else eps
        self.dtype = cfg.dtype
        self.plus_one = cfg.norm_plus_one
        init = _zeros if cfg.norm_plus_one else _ones
        self.scale = param(rngs, init, (dim,), (axis,), cfg.param_dtype)

    def __call__(self, x, out_dtype=None):
        x32 = x.astype(jnp.float32)  # variance in f32 whatever the compute dtype
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = _lead(self.scale[...].astype(jnp.float32), x32.ndim)
        if self.plus_one:
            scale = 1.0 + scale
        return (x32 * scale).astype(out_dtype or self.dtype)


# ----------------------------------------------------------------------------- rope
def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse frequencies [H/2] in float32, with the configured scaling applied.
    `local`: those of the sliding-window layers, which differ only with
    `cfg.rope_local_theta` (Gemma 3: their own base, no scaling)."""
    h = cfg.head_dim
    if local and cfg.rope_local_theta is not None:
        return (1.0 / (cfg.rope_local_theta ** (np.arange(0, h, 2, dtype=np.float32) / h))).astype(
            np.float32
        )
    inv = (1.0 / (cfg.rope_theta ** (np.arange(0, h, 2, dtype=np.float32) / h))).astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, old = cfg.rope_factor, cfg.rope_original_max_position
        lo, hi = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_sin_cos(cfg: ModelConfig, positions, local: bool = False):
    """sin, cos of shape [B, T, H] for integer positions [B, T] (angles in f32), for
    the global layers or (`local`) the sliding-window ones."""
    inv_freq = jnp.asarray(rope_inv_freq(cfg, local))[None, None, :]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x_BTNH, sin_BTH, cos_BTH):
    """Rotates pairs (i, i + H/2), the convention of the Hugging Face checkpoints."""
    x = x_BTNH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    sin, cos = sin_BTH[:, :, None, :], cos_BTH[:, :, None, :]
    return (x * cos + rotated * sin).astype(x_BTNH.dtype)


# ------------------------------------------------------------------------ attention
def attention_mask(attention_mask_BS, q_len: int, *, q_offset=None, segment_ids=None):
    """Boolean [B, T, S] mask: causal, keys that are real tokens, same segment.

    `q_offset` ([B] or scalar) is where the T queries sit among the S keys (0 for a
    full forward; the cache position when decoding).
    """
    s_len = attention_mask_BS.shape[1]
    q_pos = jnp.arange(q_len)[None, :] + (0 if q_offset is None else jnp.reshape(q_offset, (-1, 1)))
    k_pos = jnp.arange(s_len)
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (attention_mask_BS[:, None, :] > 0)
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask


def window_mask(q_positions_BT, k_positions_BS, window: int):
    """Boolean [B, T, S]: key within the last `window` positions of the query (its
    own included), transformers' sliding window. Counted in positions, so it also
    holds across left padding between a cached head and its rest."""
    return q_positions_BT[:, :, None] - k_positions_BS[:, None, :] < window


def soft_cap(x, cap: float | None):
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); x when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, dtype, *, scale=None, cap=None):
    """Causal grouped-query attention of a full forward (keys = the T queries' own
    positions; `mask_BTS` from `attention_mask` without `q_offset`).

    Queries go in blocks, each against the keys up to its own end: the blocks above
    the causal diagonal, fully masked, are never computed, which skips about 44% of
    the logits at 8 blocks, and each block's [heads, rows, keys] softmax stays small
    (timings: docs/benchmarks.md, "Attention"). Every row that sees
    a key gets the unblocked result (the skipped logits only held the fill value);
    a row of left padding sees none and gets a finite filler, the mean of the values
    in its block's key range rather than of all keys, which no loss reads.
    `scale` multiplies q.k (default 1/sqrt(H)); `cap` soft-caps the scaled logits.
    """
    t = q_BTNH.shape[1]
    assert k_BSKH.shape[1] == t, "full-forward attention: as many keys as queries"
    block = max(_ATTN_MIN_BLOCK, -(-t // _ATTN_BLOCKS))
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outs.append(
            _attention_block(
                q_BTNH[:, start:end],
                k_BSKH[:, :end],
                v_BSKH[:, :end],
                mask_BTS[:, start:end, :end],
                dtype,
                scale,
                cap,
            )
        )
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


_ATTN_BLOCKS = 8  # query blocks of a long sequence (more: more skipped, more to compile)
_ATTN_MIN_BLOCK = 64  # rows per block at least (shorter: a single block)


def _attention_block(q_BTNH, k_BSKH, v_BSKH, mask_BTS, dtype, scale=None, cap=None):
    """Attention of T queries against S keys with float32 logits and softmax.
    Autodiff differentiates it: a hand-written backward was no faster on CPU
    (docs/benchmarks.md, "Attention")."""
    b, t, n, h = q_BTNH.shape
    k = k_BSKH.shape[2]
    q = q_BTNH.reshape(b, t, k, n // k, h).astype(dtype)
    logits = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q, k_BSKH.astype(dtype), preferred_element_type=jnp.float32
    )
    logits = soft_cap(logits * (1.0 / math.sqrt(h) if scale is None else scale), cap)
    # A finite fill keeps fully masked rows (left padding) finite instead of NaN.
    logits = jnp.where(mask_BTS[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    # Contract into BKGTH and transpose the small result (see `cached_attention`).
    out = jnp.einsum("BKGTS,BSKH->BKGTH", probs, v_BSKH.astype(dtype))
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q_proj = Dense(
            (d,), (n, h), ("embed", "heads", "head_dim"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs
        )
        self.k_proj = Dense(
            (d,), (k, h), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs
        )
        self.v_proj = Dense(
            (d,), (k, h), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs
        )
        self.o_proj = Dense(
            (n, h), (d,), ("heads", "head_dim", "embed"), bias=cfg.o_bias, cfg=cfg, rngs=rngs
        )
        if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim of each head, before rope
            self.q_norm = RMSNorm(h, "head_dim", cfg=cfg, rngs=rngs)
            self.k_norm = RMSNorm(h, "head_dim", cfg=cfg, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None

    def qkv(self, x_BTD, sin, cos):
        """Projected, normed and rotated q [B,T,N,H], k and v [B,T,K,H]."""
        q, k, v = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, sin, cos), apply_rope(k, sin, cos), v

    def __call__(self, x_BTD, sin, cos, attend):
        """`attend(q, k, v)` is the attention kernel the model chose for this forward
        (`Transformer.hidden_states`)."""
        q, k, v = self.qkv(x_BTD, sin, cos)
        return self.o_proj(attend(q, k, v))

    def with_cache(self, x_BTD, sin, cos, attend, k_cache, v_cache, index):
        """Attention of T new tokens against this layer's KV cache, writing theirs first.

        The new keys and values go to slots [index, index + T) of the caches (laid out
        as `decoder.cache_shapes` says); `attend(q, k, v, k_cache, v_cache)` is the
        kernel the model chose (`Transformer.forward_with_cache`). Returns the output
        [B, T, D] and the updated caches.
        """
        q, k, v = self.qkv(x_BTD, sin, cos)
        k_cache, v_cache = write_cache(k_cache, v_cache, k, v, index, keys_transposed(self.cfg))
        return self.o_proj(attend(q, k, v, k_cache, v_cache)), k_cache, v_cache


def keys_transposed(cfg: ModelConfig) -> bool:
    """Whether the key cache is [B, K, H, S] (the CPU form, see `cached_attention`)
    rather than [B, K, S, H] like the values."""
    return kernels.of(cfg.kernels) == "cpu"


def write_cache(k_cache, v_cache, k_BTKH, v_BTKH, index, transposed: bool):
    """The caches with T new keys and values written at slots [index, index + T).
    In-place slice writes: inside a while loop with a donated cache XLA updates the
    buffer without copying it."""
    if transposed:
        k_new = jnp.transpose(k_BTKH, (0, 2, 3, 1))  # [B, K, H, T]
        k_at = (0, 0, 0, index)
    else:
        k_new = jnp.swapaxes(k_BTKH, 1, 2)  # [B, K, T, H]
        k_at = (0, 0, index, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k_new.astype(k_cache.dtype), k_at)
    v_new = jnp.swapaxes(v_BTKH, 1, 2).astype(v_cache.dtype)  # [B, K, T, H]
    v_cache = jax.lax.dynamic_update_slice(v_cache, v_new, (0, 0, index, 0))
    return k_cache, v_cache


def cached_attention(
    q_BTNH, k_cache, v_BKSH, mask_BTS, dtype, transposed: bool, *, scale=None, cap=None
):
    """`dot_product_attention` against a KV cache: keys [B, K, H, S] (`transposed`)
    or [B, K, S, H], values [B, K, S, H].

    Both caches are kv-head-major, so both einsums contract them in place (a
    [B, S, K, H] cache would be transposed, copied whole, at every decode step). On
    CPU the keys are stored transposed: the logits are then a row-major [G, H] x
    [H, S] product per (row, kv head). Against [B, K, S, H] keys XLA:CPU computes
    them as [S, H] x [H, G] with G (query heads per kv head, 3 for SmolLM2) as the
    output's minor dim, a slower form (docs/benchmarks.md, "Attention").
    `scale` and `cap` as in `dot_product_attention`.
    """
    b, t, n, h = q_BTNH.shape
    k = k_cache.shape[1]
    out_dtype = dtype
    # A cache wider than the compute dtype is contracted at its own precision: a
    # cast would convert (copy) the whole cache at every step.
    dtype = jnp.promote_types(dtype, k_cache.dtype)
    # q as [B, K, G, T, H] (a small transpose): with T between the batch and the
    # contracted dims XLA:CPU has no kernel for a bf16 product with f32 logits.
    q = jnp.transpose(q_BTNH.reshape(b, t, k, n // k, h), (0, 2, 3, 1, 4)).astype(dtype)
    spec = "BKGTH,BKHS->BKGTS" if transposed else "BKGTH,BKSH->BKGTS"
    logits = jnp.einsum(spec, q, k_cache.astype(dtype), preferred_element_type=jnp.float32)
    logits = soft_cap(logits * (1.0 / math.sqrt(h) if scale is None else scale), cap)
    logits = jnp.where(mask_BTS[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    # Contract into BKGTH and transpose the small result: asked for BTKGH directly,
    # XLA:CPU swaps the operands into a much slower transposed-lhs batched matmul.
    # (f32 results: XLA:CPU has no bf16-result kernel and would convert the cache.)
    out = jnp.einsum(
        "BKGTS,BKSH->BKGTH", probs, v_BKSH.astype(dtype), preferred_element_type=jnp.float32
    )
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h)
    return out.astype(out_dtype)


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    # transformers' gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)), SwiGLU with silu, GeGLU (Gemma) with
    tanh-approximated GELU."""

    def __init__(self, cfg: ModelConfig, *, rngs):
        d, f, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Dense((d,), (f,), ("embed", "mlp"), bias=b, cfg=cfg, rngs=rngs)
        self.up_proj = Dense((d,), (f,), ("embed", "mlp"), bias=b, cfg=cfg, rngs=rngs)
        self.down_proj = Dense((f,), (d,), ("mlp", "embed"), bias=b, cfg=cfg, rngs=rngs)
        self.act = cfg.hidden_act

    def __call__(self, x_BTD):
        act = _ACTIVATIONS[self.act]
        return self.down_proj(act(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)).

    With `cfg.sandwich_norms` (Gemma 2 / 3) each branch's output is normed too before
    its residual add: x + norm(attn(norm(x))), then + norm(mlp(norm(x))), with
    transformers' names (`post_attention_layernorm` is then the attention output's
    norm, `pre_feedforward_layernorm` the MLP input's).
    """

    def __init__(self, cfg: ModelConfig, *, rngs):
        d = cfg.hidden_size
        self.input_layernorm = RMSNorm(d, "embed", cfg=cfg, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(d, "embed", cfg=cfg, rngs=rngs)
        if cfg.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(d, "embed", cfg=cfg, rngs=rngs)
            self.post_feedforward_layernorm = RMSNorm(d, "embed", cfg=cfg, rngs=rngs)
        else:
            self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None
        self.mlp = MLP(cfg, rngs=rngs)

    def _mlp_branch(self, x_BTD, h_BTD):
        """The attention output `h` added to the residual, then the MLP branch."""
        if self.pre_feedforward_layernorm is None:
            x_BTD = x_BTD + h_BTD
            return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
        x_BTD = x_BTD + self.post_attention_layernorm(h_BTD)
        h_BTD = self.mlp(self.pre_feedforward_layernorm(x_BTD))
        return x_BTD + self.post_feedforward_layernorm(h_BTD)

    def __call__(self, x_BTD, sin, cos, attend):
        h = self.self_attn(self.input_layernorm(x_BTD), sin, cos, attend)
        return self._mlp_branch(x_BTD, h)

    def with_cache(self, x_BTD, sin, cos, attend, k_cache, v_cache, index):
        """`__call__` for cached decoding: also returns the updated caches."""
        h, k_cache, v_cache = self.self_attn.with_cache(
            self.input_layernorm(x_BTD), sin, cos, attend, k_cache, v_cache, index
        )
        return self._mlp_branch(x_BTD, h), k_cache, v_cache
