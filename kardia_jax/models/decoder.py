"""The decoder-only language model shared by policy, reference and judge:
embeddings -> N pre-norm layers (optionally scanned, optionally rematerialised)
-> final RMSNorm -> tied or untied lm_head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
)
from kardia_jax.models.layers import attention_mask as make_attention_mask
from kardia_jax.sharding import constrain, shards_along

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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


class Transformer(nnx.Module):
    """Qwen2 / Qwen2.5, Qwen3 and Llama causal LMs, selected by `ModelConfig`.

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
        sin, cos = rope_sin_cos(cfg, positions)
        if kernels.of(cfg.kernels) == "tpu":
            segments = splash_segments(attention_mask, segment_ids)

            def attend(q, k, v):
                return self._splash(q, k, v, segments, segments)
        else:
            mask = make_attention_mask(attention_mask, t, segment_ids=segment_ids)

            def attend(q, k, v):
                return dot_product_attention(q, k, v, mask, jnp.dtype(cfg.dtype))

        x = self._pin(self.embed_tokens(input_ids))
        x = self._run_layers(x, sin, cos, attend)
        return self._pin(self.norm(x, out_dtype=jnp.float32))

    def _splash(self, q, k, v, q_segments, kv_segments, q_offset=0):
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
            mesh=mesh,
            batch_axes=tuple(batch_axes),
            head_axes=self.head_axes,
            interpret=kernels.platform_of(mesh) != "tpu",
        )

    def _cached_attend(self, kv_mask_BS, t: int, index):
        """The attention kernel of `forward_with_cache`: `attend(q, k, v, k_cache,
        v_cache)`, T queries at slots [index, index + T). On TPU with a static index
        (prefill, the judge's shared head and rests) splash attention over slots
        [0, index + T); else the XLA form against the whole cache."""
        cfg = self.config
        if kernels.of(cfg.kernels) == "tpu" and isinstance(index, int):
            end = index + t
            kv_segments = kv_mask_BS[:, :end].astype(jnp.int32)
            q_segments = kv_segments[:, index:]

            def attend(q, k, v, k_cache, v_cache):
                if index:  # the keys before these queries come from the cache
                    k = jnp.swapaxes(k_cache[:, :, :end], 1, 2).astype(q.dtype)
                    v = jnp.swapaxes(v_cache[:, :, :end], 1, 2).astype(q.dtype)
                return self._splash(q, k, v, q_segments, kv_segments, q_offset=index)

            return attend
        mask = make_attention_mask(kv_mask_BS, t, q_offset=index)
        transposed = keys_transposed(cfg)

        def attend(q, k, v, k_cache, v_cache):
            del k, v
            return cached_attention(q, k_cache, v_cache, mask, jnp.dtype(cfg.dtype), transposed)

        return attend

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
        cache slots that hold real tokens (left padding is 0); the new keys and
        values are written at slots [index, index + T), and each query attends
        causally to slots <= its own. The caches are laid out as `init_cache` makes
        them: keys [B, K, H, S] and values [B, K, S, H] per layer, one stacked
        [L, ...] array each with `scan_layers` (carried by the layer scan), else a
        tuple of L arrays (each updated in place, no slicing).
        Returns the final-normed hidden states [B, T, D] (f32; project only the
        rows you need with `logits`) and the updated caches.
        """
        t = input_ids.shape[1]
        sin, cos = rope_sin_cos(self.config, positions)
        attend = self._cached_attend(kv_mask_BS, t, index)
        x = self._pin(self.embed_tokens(input_ids))
        index = jnp.asarray(index, jnp.int32)
        if not self.config.scan_layers:
            cache_k, cache_v = list(cache_k), list(cache_v)
            for i, layer in enumerate(self.layers):
                x, cache_k[i], cache_v[i] = layer.with_cache(
                    x, sin, cos, attend, cache_k[i], cache_v[i], index
                )
                x = self._pin(x)
            return self.norm(x, out_dtype=jnp.float32), tuple(cache_k), tuple(cache_v)

        # The stacked cache rides in the scan carry, not as xs / ys: each layer reads
        # its slice and writes back only the T new slots, where ys would restack
        # every layer's whole cache into a fresh buffer at every step.
        graphdef, state = nnx.split(self.layers)
        transposed = keys_transposed(self.config)

        def step(carry, layer_state):
            x, ck, cv, i = carry
            k_l = jax.lax.dynamic_index_in_dim(ck, i, keepdims=False)
            v_l = jax.lax.dynamic_index_in_dim(cv, i, keepdims=False)
            x, k_l, v_l = nnx.merge(graphdef, layer_state).with_cache(
                x, sin, cos, attend, k_l, v_l, index
            )
            b, k, _, h = v_l.shape
            at_v = (i, 0, 0, index, 0)
            at_k = (i, 0, 0, 0, index) if transposed else at_v
            k_size = (b, k, h, t) if transposed else (b, k, t, h)
            k_new = jax.lax.dynamic_slice(k_l, at_k[1:], k_size)
            v_new = jax.lax.dynamic_slice(v_l, at_v[1:], (b, k, t, h))
            ck = jax.lax.dynamic_update_slice(ck, k_new[None], at_k)
            cv = jax.lax.dynamic_update_slice(cv, v_new[None], at_v)
            return (self._pin(x), ck, cv, i + 1), None

        init = (x, cache_k, cache_v, jnp.zeros((), jnp.int32))
        (x, cache_k, cache_v, _), _ = jax.lax.scan(step, init, state)
        return self.norm(x, out_dtype=jnp.float32), cache_k, cache_v

    def head_weight(self) -> tuple[jax.Array, bool]:
        """(output projection, vocab_major): the tied embedding table [V, D] (True)
        or the untied lm_head kernel [D, V] (False). The one place that knows which."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, hidden_BTD):
        """Projects hidden states to the vocabulary, accumulating in float32."""
        cfg = self.config
        return project_to_vocab(hidden_BTD, *self.head_weight(), cfg.dtype, cfg.kernels)

    def _run_layers(self, x, sin, cos, attend):
        cfg = self.config

        def body(graphdef, state, x):
            return self._pin(nnx.merge(graphdef, state)(x, sin, cos, attend))

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT[cfg.remat], static_argnums=(0,))
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            x, _ = jax.lax.scan(lambda h, st: (body(graphdef, st, h), None), x, state)
            return x
        for layer in self.layers:
            x = body(*nnx.split(layer), x)
        return x


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (tests, benchmarks, shape planning)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory, no FLOPs."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
