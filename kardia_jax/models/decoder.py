"""The decoder-only language model shared by policy, reference and judge:
embeddings -> N pre-norm layers (optionally scanned, optionally rematerialised;
global or sliding-window attention per layer) -> final RMSNorm -> tied or untied
lm_head (optionally soft-capped)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.models import cpu_matmul, kernels, splash
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.layers import (
    DecoderLayer,
    Dense,
    Embed,
    RMSNorm,
    cached_attention,
    dot_product_attention,
    keys_transposed,
    rope_sin_cos,
    soft_cap,
    window_mask,
)
from kardia_jax.models.layers import attention_mask as make_attention_mask
from kardia_jax.sharding import constrain, shards_along

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def pick_kind(local, by_kind: dict):
    """The value of a layer's kind (`local`: sliding window or not) from `by_kind`
    {False: global, True: local}: a plain lookup for a Python bool, an element-wise
    select for a traced one (scanned layers of both kinds share one layer body)."""
    if isinstance(local, bool):
        return by_kind[local]
    return jax.tree.map(lambda g, w: jnp.where(local, w, g), by_kind[False], by_kind[True])


def layer_kinds(cfg: ModelConfig) -> tuple[bool, ...]:
    """The layer kinds the model has: (False,) global only, (True,) or (False, True)."""
    return tuple(sorted(set(cfg.local_layers)))


def positions_from_mask(attention_mask_BT):
    """Left padding: each row counts positions from its first real token, as
    transformers' `generate` does (pads get 0; their outputs are never used)."""
    return jnp.maximum(jnp.cumsum(attention_mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segments(segment_ids_BT):
    """Packed rows: positions restart at 0 at the first token of every segment."""
    t = jnp.arange(segment_ids_BT.shape[1])
    starts = jnp.concatenate(
        [
            jnp.ones_like(segment_ids_BT[:, :1], bool),
            segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1],
        ],
        axis=1,
    )
    first = jax.lax.cummax(jnp.where(starts, t[None, :], 0), axis=1)
    return t[None, :] - first


def splash_segments(attention_mask_BT, segment_ids_BT=None):
    """Splash attention's segment ids for a row's tokens: padding 0, real tokens
    their packed segment + 1 (1 unpacked), so a query sees only keys of its own
    segment and never padding, as `layers.attention_mask` says."""
    real = attention_mask_BT > 0
    seg = 1 if segment_ids_BT is None else segment_ids_BT.astype(jnp.int32) + 1
    return jnp.where(real, seg, 0).astype(jnp.int32)


def project_to_vocab(h_XD, w_out, vocab_major: bool, dtype, kernel_forms: str = "auto"):
    """Logits [..., V] in float32 from hidden states [..., D] and an output
    projection `w_out` as `Transformer.head_weight` returns it: the tied embedding
    table [V, D] (`vocab_major`) or the lm_head kernel [D, V]. Every projection onto
    the vocabulary (logits, fused log-probs, judge scores) goes through here;
    `kernel_forms` is the model config's `kernels`."""
    dtype = jnp.dtype(dtype)
    if not vocab_major and kernels.of(kernel_forms) == "cpu":
        # The canonical [M, D] x [D, V] dot XLA:CPU runs on its fast kernels.
        return cpu_matmul.matmul(h_XD, w_out, 1, dtype, jnp.float32)
    spec = "...D,VD->...V" if vocab_major else "...D,DV->...V"
    return jnp.einsum(
        spec, h_XD.astype(dtype), w_out.astype(dtype), preferred_element_type=jnp.float32
    )


def cache_shapes(cfg: ModelConfig, batch: int, slots: int):
    """Shapes of one key array and one value array of the KV cache: values
    [B, K, S, H], keys the same or, for CPU kernels, transposed [B, K, H, S] (see
    `layers.cached_attention`), with a leading [L] when `cfg.scan_layers` stacks
    the layers."""
    lead = (cfg.num_layers,) if cfg.scan_layers else ()
    v = (*lead, batch, cfg.num_kv_heads, slots, cfg.head_dim)
    k = (*lead, batch, cfg.num_kv_heads, cfg.head_dim, slots) if keys_transposed(cfg) else v
    return k, v


def cache_axes(cfg: ModelConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Logical axes (see kardia_jax.sharding) of one layer's keys and values, in
    `cache_shapes`' layout: rows follow the batch, kv heads the tensor-parallel
    sharding of k_proj / v_proj."""
    v = ("batch", "kv_heads", "length", "head_dim")
    k = ("batch", "kv_heads", "head_dim", "length") if keys_transposed(cfg) else v
    return k, v


def ring_slots(cfg: ModelConfig, slots: int) -> int | None:
    """Slots of a sliding layer's cache when decoding into `slots` slots: its window
    when that is shorter (a ring buffer, see `cache_for_decode`), else None (every
    layer keeps all `slots`)."""
    if True in cfg.local_layers and cfg.sliding_window < slots:
        return cfg.sliding_window
    return None


def cache_for_decode(cfg: ModelConfig, cache_k, cache_v, slots: int):
    """The decode layout of a prefilled cache (`init_cache`'s layout, its P slots
    filled): global layers padded to `slots` slots; sliding layers, when their window
    W is shorter (`ring_slots`), a ring of W slots holding the last W (absolute slot
    s at s mod W), which one-token decode steps keep writing at `index` mod W.

    A ring holds the last W slots, so it is exact where every slot after a row's
    first real token is real (the sampler's left-padded rows): a window counted in
    positions then spans W slots. Scanned layers of both kinds become a pair of
    stacks, (global layers', sliding layers'); `forward_with_cache` tells each
    layer's layout by its slot count."""
    w = ring_slots(cfg, slots)
    k_axis = -1 if keys_transposed(cfg) else -2

    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis % x.ndim] = (0, slots - x.shape[axis])
        return jnp.pad(x, widths)

    def ring(x, axis):
        filled = x.shape[axis]
        top = max(filled, w)
        widths = [(0, 0)] * x.ndim
        widths[axis % x.ndim] = (0, top - filled)
        last = jax.lax.slice_in_dim(jnp.pad(x, widths), top - w, top, axis=axis % x.ndim)
        return jnp.roll(last, top % w, axis=axis)  # slot top - W + j -> (top + j) mod W

    def convert(local: bool):
        if local and w is not None:
            return lambda k, v: (ring(k, k_axis), ring(v, -2))
        return lambda k, v: (pad(k, k_axis), pad(v, -2))

    if not cfg.scan_layers:
        pairs = [
            convert(local)(k, v)
            for k, v, local in zip(cache_k, cache_v, cfg.local_layers, strict=True)
        ]
        return tuple(k for k, _ in pairs), tuple(v for _, v in pairs)
    kinds = layer_kinds(cfg)
    if w is None or len(kinds) == 1:
        return convert(kinds[0])(cache_k, cache_v)
    local = np.asarray(cfg.local_layers)
    glob, slid = np.flatnonzero(~local), np.flatnonzero(local)
    kg, vg = convert(False)(cache_k[glob], cache_v[glob])
    kl, vl = convert(True)(cache_k[slid], cache_v[slid])
    return (kg, kl), (vg, vl)


def _write_slot(index, cache_v, slots: int, t: int):
    """Where a layer's cache takes T new tokens of absolute slot `index`: `index`,
    or `index` mod W in a ring of W < `slots` slots (one token per step: T new keys
    would overwrite keys that the earlier of them still see)."""
    n = cache_v.shape[-2]
    if n == slots:
        return index
    if t != 1:
        raise ValueError(f"a ring-buffer cache of {n} slots takes one token per step, not {t}")
    return index % n


class Transformer(nnx.Module):
    """Qwen2 / Qwen2.5, Qwen3, Llama, Gemma, Gemma 2 and Gemma 3 (text) causal LMs,
    selected by `ModelConfig`.

    Parameter names follow the Hugging Face checkpoints (`embed_tokens`,
    `layers.i.self_attn.q_proj`, ...), so the checkpoint map is a short table.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d, v = cfg.hidden_size, cfg.vocab_size
        self.embed_tokens = Embed(v, d, cfg=cfg, rngs=rngs)
        if cfg.scan_layers:
            # One stacked copy of every layer weight, leading axis "layers": one
            # compiled layer body is scanned over it (compile time independent of depth).
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(rngs):
                return DecoderLayer(cfg, rngs=rngs)

            self.layers = make(rngs)
        else:
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(d, "embed", cfg=cfg, rngs=rngs)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Dense((d,), (v,), ("embed", "vocab"), bias=False, cfg=cfg, rngs=rngs)
        # Placement of the [B, T, D] residual stream under a mesh (set by the trainer,
        # see `constrain_activations`); None leaves it to the partitioner.
        self.activation_sharding = None
        self.head_axes: tuple[str, ...] = ()

    def constrain_activations(self, sharding, head_axes=()) -> None:
        """Pins the residual stream (batch split over data-parallel axes, hidden dim
        whole). Without it the partitioner may follow the FSDP-sharded weights and
        split activations along `embed`, turning every matmul (the 152k-vocab head
        included) into full-batch partial sums; pinned, it all-gathers weights
        instead, which is what FSDP means. `head_axes` are the mesh axes splitting
        attention heads, for kernels that run per shard (splash attention). Static
        attributes: part of the graphdef."""
        self.activation_sharding = sharding
        self.head_axes = tuple(head_axes)

    def _pin(self, x):
        sharding = self.activation_sharding
        if sharding is not None and x.shape[0] % shards_along(sharding):
            # A batch the data shards cannot split evenly (the judge's one-row shared
            # head): left to the partitioner rather than padded onto every shard.
            sharding = None
        return constrain(x, sharding)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None):
        """Logits [B, T, V] in float32.

        `attention_mask` [B, T] marks real tokens (1) and padding (0); without
        `positions`, they are derived from it (left padding) or from `segment_ids`
        (packed rows), so a padded batch gives each row the logits it gets alone.
        """
        return self.logits(self.hidden_states(input_ids, attention_mask, positions, segment_ids))

    def hidden_states(self, input_ids, attention_mask=None, positions=None, segment_ids=None):
        """Final-normed hidden states [B, T, D] in float32."""
        cfg = self.config
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = (
                positions_from_segments(segment_ids)
                if segment_ids is not None
                else positions_from_mask(attention_mask)
            )
        kinds = layer_kinds(cfg)
        rope = {local: rope_sin_cos(cfg, positions, local) for local in kinds}
        if kernels.of(cfg.kernels) == "tpu":
            segments = splash_segments(attention_mask, segment_ids)

            def attend(q, k, v, local):
                return self._splash_layer(q, k, v, segments, local)
        else:
            mask = make_attention_mask(attention_mask, t, segment_ids=segment_ids)
            # A sliding layer's window counts positions (`layers.window_mask`); with
            # left padding or packing that is transformers' count of slots.
            masks = {
                local: mask & window_mask(positions, positions, cfg.sliding_window)
                if local
                else mask
                for local in kinds
            }

            def attend(q, k, v, local):
                return dot_product_attention(
                    q,
                    k,
                    v,
                    pick_kind(local, masks),
                    jnp.dtype(cfg.dtype),
                    scale=cfg.attention_scale,
                    cap=cfg.attn_logit_softcap,
                )

        x = self._pin(self.embed_tokens(input_ids))
        x = self._run_layers(x, rope, attend)
        return self._pin(self.norm(x, out_dtype=jnp.float32))

    def shared_prefix_hidden_states(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """`hidden_states` of rows that share prompts, each prompt run once: B prompts
        [B, P] (left-padded) and G = R / B continuations of each [R, N], row b * G + g
        continuing prompt b. Returns the final-normed hidden states (f32) of the
        prompts [B, P, D] and of the continuations [R, N, D]: those `hidden_states`
        gives row b * G + g's prompt + continuation, with positions and sliding
        windows counted as it counts them.

        Each prompt and its G continuations form one row [P + G * N] of a single
        pass (position-wise work over B * (P + G * N) tokens, not R * (P + N)); a
        continuation's queries attend to its prompt's keys, repeated G times (their
        gradient sums over the G), and causally to its own. The XLA attention forms
        on every backend (no splash kernel)."""
        cfg = self.config
        b, p = prompt_ids.shape
        r, n = completion_ids.shape
        g = r // b
        assert b * g == r, f"{r} continuations are not {b} prompts' groups"
        prompt_mask = prompt_mask.astype(jnp.int32)
        completion_mask = completion_mask.astype(jnp.int32)
        pos_p = positions_from_mask(prompt_mask)
        prompt_len = jnp.repeat(jnp.sum(prompt_mask, axis=1), g)
        # `positions_from_mask` of the whole row, from the prompt's real length on.
        pos_c = jnp.maximum(prompt_len[:, None] + jnp.cumsum(completion_mask, axis=1) - 1, 0)
        ids = jnp.concatenate([prompt_ids, completion_ids.reshape(b, g * n)], axis=1)
        positions = jnp.concatenate([pos_p, pos_c.reshape(b, g * n)], axis=1)
        kinds = layer_kinds(cfg)
        rope = {local: rope_sin_cos(cfg, positions, local) for local in kinds}

        key_mask = jnp.concatenate([jnp.repeat(prompt_mask, g, axis=0), completion_mask], axis=1)
        masks_p = {False: make_attention_mask(prompt_mask, p)}
        masks_c = {False: make_attention_mask(key_mask, n, q_offset=p)}
        if True in kinds:
            key_pos = jnp.concatenate([jnp.repeat(pos_p, g, axis=0), pos_c], axis=1)
            window = cfg.sliding_window
            masks_p[True] = masks_p[False] & window_mask(pos_p, pos_p, window)
            masks_c[True] = masks_c[False] & window_mask(pos_c, key_pos, window)
        dtype, transposed = jnp.dtype(cfg.dtype), keys_transposed(cfg)

        def attend(q, k, v, local):
            prompt_out = dot_product_attention(
                q[:, :p],
                k[:, :p],
                v[:, :p],
                pick_kind(local, masks_p),
                dtype,
                scale=cfg.attention_scale,
                cap=cfg.attn_logit_softcap,
            )

            def own_keys(x):  # [B, P + G * N, K, H] -> [R, P + N, K, H]
                rest = x[:, p:].reshape(r, n, *x.shape[2:])
                return jnp.concatenate([jnp.repeat(x[:, :p], g, axis=0), rest], axis=1)

            k_rs, v_rs = own_keys(k), own_keys(v)
            k_cache = jnp.transpose(k_rs, (0, 2, 3, 1)) if transposed else jnp.swapaxes(k_rs, 1, 2)
            out = cached_attention(
                q[:, p:].reshape(r, n, *q.shape[2:]),
                k_cache,
                jnp.swapaxes(v_rs, 1, 2),
                pick_kind(local, masks_c),
                dtype,
                transposed,
                scale=cfg.attention_scale,
                cap=cfg.attn_logit_softcap,
            )
            out = out.reshape(b, g * n, *out.shape[2:]).astype(prompt_out.dtype)
            return jnp.concatenate([prompt_out, out], axis=1)

        x = self._pin(self.embed_tokens(ids))
        x = self._run_layers(x, rope, attend)
        h = self._pin(self.norm(x, out_dtype=jnp.float32))
        return h[:, :p], h[:, p:].reshape(r, n, h.shape[-1])

    def _splash_layer(self, q, k, v, segments, local):
        """Splash attention of a full forward for a layer of kind `local`: a sliding
        layer passes its window as a local mask; scanned layers of both kinds
        choose between the two kernels with `lax.cond`."""
        window = self.config.sliding_window

        def run(local: bool):
            return self._splash(q, k, v, segments, segments, window=window if local else None)

        if isinstance(local, bool):
            return run(local)
        return jax.lax.cond(local, lambda: run(True), lambda: run(False))

    def _splash(self, q, k, v, q_segments, kv_segments, q_offset=0, window=None):
        """Splash attention on this model's mesh: batch over the residual stream's
        data-parallel axes (whole when the rows do not split evenly, as `_pin`),
        heads over `head_axes`; interpreted when the devices are not TPUs (tests)."""
        sharding = self.activation_sharding
        mesh = sharding.mesh if sharding is not None else None
        batch_axes = ()
        if sharding is not None and q.shape[0] % shards_along(sharding) == 0:
            entry = sharding.spec[0] if len(sharding.spec) else None
            batch_axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
        return splash.splash_attention(
            q,
            k,
            v,
            q_segments,
            kv_segments,
            q_offset=q_offset,
            window=window,
            scale=self.config.attention_scale,
            cap=self.config.attn_logit_softcap,
            mesh=mesh,
            batch_axes=tuple(batch_axes),
            head_axes=self.head_axes,
            interpret=kernels.platform_of(mesh) != "tpu",
        )

    def _cached_attention(self, kv_mask_BS, t: int, index, positions_BT):
        """The attention of `forward_with_cache`: `attention(q, k, v, k_cache, v_cache,
        local)`, T queries at slots [index, index + T) and rope positions
        `positions_BT`, against one layer's cache that already holds their keys. On
        TPU with a static index (prefill, the judge's shared head and rests) splash
        attention over slots [0, index + T); else the XLA form against the whole cache.

        Sliding layers mask keys by position, each cache slot's being the count of
        real slots before it (as `positions_from_mask` counts a prompt's): that holds
        for the sampler's cache and for the judge's, whose rest is left-padded after
        its head, where a window counted in slots would be wrong. Splash counts
        slots, so models with sliding layers take the XLA form here. A ring of W
        slots (`cache_for_decode`) takes each ring slot's mask from the absolute slot
        it holds.
        """
        cfg = self.config
        kinds = layer_kinds(cfg)
        if kernels.of(cfg.kernels) == "tpu" and isinstance(index, int) and True not in kinds:
            end = index + t
            kv_segments = kv_mask_BS[:, :end].astype(jnp.int32)
            q_segments = kv_segments[:, index:]

            def attention(q, k, v, k_cache, v_cache, local):
                del local
                if index:  # the keys before these queries come from the cache
                    k = jnp.swapaxes(k_cache[:, :, :end], 1, 2).astype(q.dtype)
                    v = jnp.swapaxes(v_cache[:, :, :end], 1, 2).astype(q.dtype)
                return self._splash(q, k, v, q_segments, kv_segments, q_offset=index)

            return attention
        slots = kv_mask_BS.shape[1]
        mask = make_attention_mask(kv_mask_BS, t, q_offset=index)
        masks = {False: mask}
        if True in kinds:
            k_positions = positions_from_mask(kv_mask_BS)
            masks[True] = mask & window_mask(positions_BT, k_positions, cfg.sliding_window)

        def ring_mask(n: int):
            # Ring slot r holds the latest absolute slot <= index that is r mod n;
            # negative before the ring has filled.
            held = index - jnp.remainder(index - jnp.arange(n), n)
            seen = jnp.take(masks[True], jnp.maximum(held, 0), axis=2)
            return seen & (held >= 0)[None, None, :]

        transposed = keys_transposed(cfg)

        def attention(q, k, v, k_cache, v_cache, local):
            del k, v
            n = v_cache.shape[-2]
            if n == slots:
                m = pick_kind(local, masks)
            else:
                assert local is True, "only sliding layers keep a ring"
                m = ring_mask(n)
            return cached_attention(
                q,
                k_cache,
                v_cache,
                m,
                jnp.dtype(cfg.dtype),
                transposed,
                scale=cfg.attention_scale,
                cap=cfg.attn_logit_softcap,
            )

        return attention

    def init_cache(self, batch: int, slots: int, dtype):
        """Empty KV caches for `forward_with_cache`, shaped by `cache_shapes`: one
        stacked array each with `scan_layers`, else tuples of L arrays."""
        cfg = self.config
        k_shape, v_shape = cache_shapes(cfg, batch, slots)
        if cfg.scan_layers:
            return jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype)
        k = tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers))
        return k, v

    def forward_with_cache(self, input_ids, positions, kv_mask_BS, cache_k, cache_v, index):
        """T new tokens through the layers against a KV cache (prefill and decode).

        `positions` [B, T] are the tokens' rope positions; `kv_mask_BS` marks the
        cache's S absolute slots that hold real tokens (left padding is 0); the new
        keys and values are written at slots [index, index + T), and each query
        attends causally to slots <= its own. The caches are laid out as `init_cache`
        makes them: keys [B, K, H, S] and values [B, K, S, H] per layer, one stacked
        [L, ...] array each with `scan_layers` (carried by the layer scan), else a
        tuple of L arrays (each updated in place, no slicing); or as
        `cache_for_decode` makes them, sliding layers in rings of fewer slots (one
        token per step) and, scanned, the two kinds in two stacks.
        Returns the final-normed hidden states [B, T, D] (f32; project only the
        rows you need with `logits`) and the updated caches.
        """
        cfg = self.config
        t = input_ids.shape[1]
        slots = kv_mask_BS.shape[1]
        kinds = layer_kinds(cfg)
        rope = {local: rope_sin_cos(cfg, positions, local) for local in kinds}
        attention = self._cached_attention(kv_mask_BS, t, index, positions)
        x = self._pin(self.embed_tokens(input_ids))
        index = jnp.asarray(index, jnp.int32)
        transposed = keys_transposed(cfg)
        if not cfg.scan_layers:
            cache_k, cache_v = list(cache_k), list(cache_v)
            for i, (layer, local) in enumerate(zip(self.layers, cfg.local_layers, strict=True)):
                x, cache_k[i], cache_v[i] = layer.with_cache(
                    x,
                    *rope[local],
                    _of_kind(attention, local),
                    cache_k[i],
                    cache_v[i],
                    _write_slot(index, cache_v[i], slots, t),
                )
                x = self._pin(x)
            return self.norm(x, out_dtype=jnp.float32), tuple(cache_k), tuple(cache_v)

        # The stacked cache rides in the scan carry, not as xs / ys: each layer reads
        # its slice and writes back only the T new slots, where ys would restack
        # every layer's whole cache into a fresh buffer at every step.
        graphdef, state = nnx.split(self.layers)

        def run_layer(x, layer_state, local, ck, cv, j):
            """Layer of kind `local` against slice `j` of the stacks (ck, cv)."""
            k_l = jax.lax.dynamic_index_in_dim(ck, j, keepdims=False)
            v_l = jax.lax.dynamic_index_in_dim(cv, j, keepdims=False)
            at = _write_slot(index, cv, slots, t)
            x, k_l, v_l = nnx.merge(graphdef, layer_state).with_cache(
                x, *pick_kind(local, rope), _of_kind(attention, local), k_l, v_l, at
            )
            b, k, _, h = v_l.shape
            at_v = (j, 0, 0, at, 0)
            at_k = (j, 0, 0, 0, at) if transposed else at_v
            k_size = (b, k, h, t) if transposed else (b, k, t, h)
            k_new = jax.lax.dynamic_slice(k_l, at_k[1:], k_size)
            v_new = jax.lax.dynamic_slice(v_l, at_v[1:], (b, k, t, h))
            ck = jax.lax.dynamic_update_slice(ck, k_new[None], at_k)
            cv = jax.lax.dynamic_update_slice(cv, v_new[None], at_v)
            return self._pin(x), ck, cv

        if isinstance(cache_k, tuple):
            return self._scan_by_pattern(x, state, run_layer, cache_k, cache_v)

        # One kind: a static choice in the body; both: each layer's flag is scanned.
        local_xs = jnp.asarray(cfg.local_layers) if len(kinds) > 1 else None

        def step(carry, xs):
            layer_state, local = xs
            local = kinds[0] if local is None else local
            x, ck, cv, i = carry
            x, ck, cv = run_layer(x, layer_state, local, ck, cv, i)
            return (x, ck, cv, i + 1), None

        init = (x, cache_k, cache_v, jnp.zeros((), jnp.int32))
        (x, cache_k, cache_v, _), _ = jax.lax.scan(step, init, (state, local_xs))
        return self.norm(x, out_dtype=jnp.float32), cache_k, cache_v

    def _scan_by_pattern(self, x, state, run_layer, cache_k, cache_v):
        """`forward_with_cache` of scanned layers of both kinds whose caches are two
        stacks of different slot counts, (global layers', sliding layers'): a scan over
        the repeats of the layer pattern (Gemma 3: five sliding, one global), then the
        layers after the last whole repeat; within them each run of layers of one kind
        is a scan of its own, the kind static and each layer's slice found in its
        kind's stack. A loop body thus reads and writes one layer of a stack, as the
        single-stack scan does: the forms that did not made the compilers copy whole
        stacks at every step (docs/tpu.md, "Sliding-window caches")."""
        cfg = self.config
        kinds = cfg.local_layers
        period = next(
            p
            for p in range(1, len(kinds) + 1)
            if all(k == kinds[i % p] for i, k in enumerate(kinds))
        )
        pattern = kinds[:period]
        repeats, rest = divmod(len(kinds), period)
        per_repeat = {kind: pattern.count(kind) for kind in (False, True)}

        def layer_params(i):
            return jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, i, keepdims=False), state)

        def layers(x, stacks, first, count, repeat):
            """Layers first .. first + count - 1 (kinds as the pattern's first
            `count`), the `repeat`-th time the pattern runs (traced or static)."""
            j, seen = 0, {False: 0, True: 0}
            while j < count:
                kind, n = pattern[j], 1
                while j + n < count and pattern[j + n] == kind:
                    n += 1
                layer, in_stack = first + j, repeat * per_repeat[kind] + seen[kind]

                def one(carry, i, kind=kind, layer=layer, in_stack=in_stack):
                    x, ck, cv = carry
                    return run_layer(x, layer_params(layer + i), kind, ck, cv, in_stack + i), None

                carry = (x, *stacks[kind])
                if n == 1:
                    carry, _ = one(carry, 0)
                else:
                    carry, _ = jax.lax.scan(one, carry, jnp.arange(n, dtype=jnp.int32))
                x, stacks = carry[0], {**stacks, kind: carry[1:]}
                j, seen[kind] = j + n, seen[kind] + n
            return x, stacks

        def step(carry, r):
            x, stacks = carry
            return layers(x, stacks, r * period, period, r), None

        (kg, kl), (vg, vl) = cache_k, cache_v
        stacks = {False: (kg, vg), True: (kl, vl)}
        (x, stacks), _ = jax.lax.scan(step, (x, stacks), jnp.arange(repeats, dtype=jnp.int32))
        x, stacks = layers(x, stacks, repeats * period, rest, repeats)
        (kg, vg), (kl, vl) = stacks[False], stacks[True]
        return self.norm(x, out_dtype=jnp.float32), (kg, kl), (vg, vl)

    def head_weight(self) -> tuple[jax.Array, bool]:
        """(output projection, vocab_major): the tied embedding table [V, D] (True)
        or the untied lm_head kernel [D, V] (False). The one place that knows which."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, hidden_BTD):
        """Projects hidden states to the vocabulary, accumulating in float32, then
        soft-caps them (Gemma 2's `final_logit_softcapping`)."""
        cfg = self.config
        logits = project_to_vocab(hidden_BTD, *self.head_weight(), cfg.dtype, cfg.kernels)
        return soft_cap(logits, cfg.final_logit_softcap)

    def _run_layers(self, x, rope, attend):
        """The layers over the residual stream `x`; `rope` {kind: (sin, cos)} and
        `attend(q, k, v, local)` serve both layer kinds (see `pick_kind`)."""
        cfg = self.config
        kinds = layer_kinds(cfg)

        def body(graphdef, state, x, local):
            layer = nnx.merge(graphdef, state)
            return self._pin(layer(x, *pick_kind(local, rope), _of_kind(attend, local)))

        # A layer's kind is static (a Python bool) unless scanned layers mix kinds.
        static_kind, traced_kind = body, body
        if cfg.remat != "none":
            policy = _REMAT[cfg.remat]
            static_kind = jax.checkpoint(body, policy=policy, static_argnums=(0, 3))
            traced_kind = jax.checkpoint(body, policy=policy, static_argnums=(0,))
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            if len(kinds) == 1:
                x, _ = jax.lax.scan(
                    lambda h, st: (static_kind(graphdef, st, h, kinds[0]), None), x, state
                )
            else:
                x, _ = jax.lax.scan(
                    lambda h, xs: (traced_kind(graphdef, xs[0], h, xs[1]), None),
                    x,
                    (state, jnp.asarray(cfg.local_layers)),
                )
            return x
        for layer, local in zip(self.layers, cfg.local_layers, strict=True):
            x = static_kind(*nnx.split(layer), x, local)
        return x


def _of_kind(attend, local):
    """`attend` with its layer kind bound: the kernel a layer calls."""

    def bound(*args):
        return attend(*args, local)

    return bound


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (tests, benchmarks, shape planning)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory, no FLOPs."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
