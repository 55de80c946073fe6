"""Causal grouped-query attention through the Pallas TPU splash kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`), with padding, masking by
segment ids and the shard_map a multi-device TPU mesh needs around it.

Same dimension alphabet as `layers.py`. On CPU the kernels run in Pallas
interpret mode (`interpret=True`), which is how the parity tests run them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

LANES = 128  # sequence tiles are multiples of the TPU's 128 lanes
# Segment id of the sequence padding added here: no real token (>= 1) or caller's
# pad token (0) has it.
PAD_SEGMENT = -1


def block_sizes(q_len: int, kv_len: int, head_dim: int) -> sk.BlockSizes:
    """Splash tiles for the forward and the non-fused backward (dq, dkv kernels) of
    padded lengths `q_len`, `kv_len` (multiples of 128).

    The largest of 512 / 256 / 128 that divides each length: larger tiles mean fewer
    grid steps (each has a fixed cost) and fuller MXU passes, 512 is MaxText's
    default (forward and both backward kernels), and a tile must divide its padded
    length. Heads wider than 256 cap the tiles at 256 to keep the f32 [block,
    head_dim] accumulators in VMEM small.
    """
    cap = 512 if head_dim <= 256 else 256
    bq = _largest_block(q_len, cap)
    bkv = _largest_block(kv_len, cap)
    return sk.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )


def _largest_block(length: int, cap: int) -> int:
    if length % LANES:
        raise ValueError(f"splash: length {length} is not a multiple of {LANES}")
    for block in (512, 256, 128):
        if block <= cap and length % block == 0:
            return block
    raise AssertionError("unreachable: 128 divides length")


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def splash_attention(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    q_segment_ids_BT,
    kv_segment_ids_BS,
    *,
    q_offset: int = 0,
    window: int | None = None,
    scale: float | None = None,
    cap: float | None = None,
    mesh=None,
    batch_axes=None,
    head_axes=None,
    interpret: bool = False,
):
    """Causal grouped-query attention through the splash kernel: query i (at position
    i + q_offset among the S keys) sees key j iff j <= i + q_offset and
    q_segment_ids[b, i] == kv_segment_ids[b, j]. Returns [B, T, N, H] in q's dtype.
    Softmax scale `scale` (default 1/sqrt(H)) and logit soft-cap `cap` as
    layers.dot_product_attention.

    `window` (a sliding-window layer) also requires j > i + q_offset - window,
    counted in key slots: the same as `layers.window_mask`'s positions where a
    segment's tokens sit in consecutive slots (left padding, packing).

    Left padding and packing are both segment ids (pad tokens 0, real tokens >= 1).
    A query that sees no real key gets a finite filler that no loss should read.
    With `mesh`, the kernel runs inside `jax.shard_map`: batch split over
    `batch_axes`, query heads over `head_axes` (and kv heads, repeated where K does
    not divide over them), sequence dims whole. Gradients come from splash's own
    custom VJP (dq and dkv kernels).
    """
    b, t, n, h = q_BTNH.shape
    s, kv = k_BSKH.shape[1], k_BSKH.shape[2]
    if n % kv:
        raise ValueError(f"splash: {n} query heads do not group over {kv} kv heads")
    if s < t + q_offset:
        raise ValueError(f"splash: {t} queries at offset {q_offset} need >= {t + q_offset} keys")
    if mesh is None:
        return _splash_local(
            q_BTNH,
            k_BSKH,
            v_BSKH,
            q_segment_ids_BT,
            kv_segment_ids_BS,
            q_offset,
            interpret,
            window,
            scale,
            cap,
        )

    batch_axes = tuple(batch_axes or ())
    head_axes = tuple(head_axes or ())
    head_shards = math.prod(mesh.shape[a] for a in head_axes)
    batch_shards = math.prod(mesh.shape[a] for a in batch_axes)
    if n % head_shards or b % batch_shards:
        raise ValueError(
            f"splash: {n} heads / batch {b} do not split over {head_shards} / {batch_shards} shards"
        )
    if kv % head_shards:
        # Each shard needs the kv heads its query heads use: repeating every kv head
        # lcm(K, shards) / K times keeps head n -> kv head n // G and makes the
        # repeated kv heads split evenly (lcm divides N since K and shards both do).
        reps = math.lcm(kv, head_shards) // kv
        k_BSKH = jnp.repeat(k_BSKH, reps, axis=2)
        v_BSKH = jnp.repeat(v_BSKH, reps, axis=2)
    heads = P(batch_axes or None, None, head_axes or None, None)
    segs = P(batch_axes or None, None)

    def local(q, k, v, q_seg, kv_seg):
        return _splash_local(q, k, v, q_seg, kv_seg, q_offset, interpret, window, scale, cap)

    # Pallas TPU kernels are not auto-partitioned: each device runs the kernel on
    # its own shard. check_vma=False: splash's pallas_calls declare outputs without
    # the varying mesh axes that check_vma=True requires of them.
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(heads, heads, heads, segs, segs),
        out_specs=heads,
        check_vma=False,
    )(q_BTNH, k_BSKH, v_BSKH, q_segment_ids_BT, kv_segment_ids_BS)


def _splash_local(
    q_BTNH, k_BSKH, v_BSKH, q_seg_BT, kv_seg_BS, q_offset, interpret, window, scale, cap
):
    """The kernel on one device's arrays: pad, scale, transpose, vmap over batch."""
    b, t, n, h = q_BTNH.shape
    s = k_BSKH.shape[1]
    t_pad, s_pad = _round_up(t, LANES), _round_up(s, LANES)
    # Splash takes pre-scaled queries. Scaling in f32 rounds each product once
    # instead of every logit by a bf16-rounded 1/sqrt(H) (a 0.2% temperature shift
    # at H = 128). The head dim stays as it is: Mosaic compiles the three kernels for
    # heads of 8 to 128 (tests/models/test_splash.py compiles 16, 64 and 128 for a
    # v5e slice), so zero-padding it to 128 would only add work.
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    q = (q_BTNH.astype(jnp.float32) * scale).astype(q_BTNH.dtype)
    q = jnp.pad(q, ((0, 0), (0, t_pad - t), (0, 0), (0, 0)))
    k = jnp.pad(k_BSKH, ((0, 0), (0, s_pad - s), (0, 0), (0, 0)))
    v = jnp.pad(v_BSKH, ((0, 0), (0, s_pad - s), (0, 0), (0, 0)))
    q_seg = jnp.pad(
        q_seg_BT.astype(jnp.int32), ((0, 0), (0, t_pad - t)), constant_values=PAD_SEGMENT
    )
    kv_seg = jnp.pad(
        kv_seg_BS.astype(jnp.int32), ((0, 0), (0, s_pad - s)), constant_values=PAD_SEGMENT
    )
    # Every query row sees key 0 causally (offset >= 0), so no row of the kernel's
    # softmax is empty: a row with no same-segment key averages values, finite. A
    # window keeps the row's own slot i + q_offset, which is never empty either.
    if window is None:
        head_mask = sm.CausalMask((t_pad, s_pad), offset=q_offset)
    else:
        head_mask = sm.LocalMask((t_pad, s_pad), window_size=(window - 1, 0), offset=q_offset)
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([head_mask] * n),
        block_sizes=block_sizes(t_pad, s_pad, h),
        head_shards=1,
        q_seq_shards=1,
        attn_logits_soft_cap=cap,
        interpret=interpret,
    )
    # The kernel is per example and head-major: [N, T, H] queries, [K, S, H] keys.
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    out = jax.vmap(kernel)(q, k, v, sk.SegmentIds(q=q_seg, kv=kv_seg))
    return jnp.swapaxes(out, 1, 2)[:, :t].astype(q_BTNH.dtype)
