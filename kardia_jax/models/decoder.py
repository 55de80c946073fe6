"""The decoder-only language model shared by policy, reference and judge:
embeddings -> N pre-norm layers (optionally scanned, optionally rematerialised)
-> final RMSNorm -> tied or untied lm_head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kardia_jax.models import cpu_matmul
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.layers import (
    DecoderLayer,
    Dense,
    Embed,
    RMSNorm,
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


def project_to_vocab(h_XD, w_out, vocab_major: bool, dtype):
    """Logits [..., V] in float32 from hidden states [..., D] and an output
    projection `w_out` as `Transformer.head_weight` returns it: the tied embedding
    table [V, D] (`vocab_major`) or the lm_head kernel [D, V]. Every projection onto
    the vocabulary (logits, fused log-probs, judge scores) goes through here."""
    dtype = jnp.dtype(dtype)
    if not vocab_major and jax.default_backend() == "cpu":
        # The canonical [M, D] x [D, V] dot XLA:CPU runs on its fast kernels.
        return cpu_matmul.matmul(h_XD, w_out, 1, dtype, jnp.float32)
    spec = "...D,VD->...V" if vocab_major else "...D,DV->...V"
    return jnp.einsum(
        spec, h_XD.astype(dtype), w_out.astype(dtype), preferred_element_type=jnp.float32
    )


def cache_shapes(cfg: ModelConfig, batch: int, slots: int):
    """Shapes of one key array and one value array of the KV cache: keys
    [B, K, H, S] (transposed: see `layers.cached_attention`), values [B, K, S, H],
    with a leading [L] when `cfg.scan_layers` stacks the layers."""
    lead = (cfg.num_layers,) if cfg.scan_layers else ()
    k = (*lead, batch, cfg.num_kv_heads, cfg.head_dim, slots)
    v = (*lead, batch, cfg.num_kv_heads, slots, cfg.head_dim)
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

    def constrain_activations(self, sharding) -> None:
        """Pins the residual stream (batch split over data-parallel axes, hidden dim
        whole). Without it the partitioner may follow the FSDP-sharded weights and
        split activations along `embed`, turning every matmul (the 152k-vocab head
        included) into full-batch partial sums; pinned, it all-gathers weights
        instead, which is what FSDP means. A static attribute: part of the graphdef."""
        self.activation_sharding = sharding

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
        mask = make_attention_mask(attention_mask, t, segment_ids=segment_ids)
        x = self._pin(self.embed_tokens(input_ids))
        x = self._run_layers(x, sin, cos, mask)
        return self._pin(self.norm(x, out_dtype=jnp.float32))

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
        mask = make_attention_mask(kv_mask_BS, t, q_offset=index)
        x = self._pin(self.embed_tokens(input_ids))
        index = jnp.asarray(index, jnp.int32)
        if not self.config.scan_layers:
            cache_k, cache_v = list(cache_k), list(cache_v)
            for i, layer in enumerate(self.layers):
                x, cache_k[i], cache_v[i] = layer.with_cache(
                    x, sin, cos, mask, cache_k[i], cache_v[i], index
                )
                x = self._pin(x)
            return self.norm(x, out_dtype=jnp.float32), tuple(cache_k), tuple(cache_v)

        # The stacked cache rides in the scan carry, not as xs / ys: each layer reads
        # its slice and writes back only the T new slots, where ys would restack
        # every layer's whole cache into a fresh buffer at every step.
        graphdef, state = nnx.split(self.layers)

        def step(carry, layer_state):
            x, ck, cv, i = carry
            k_l = jax.lax.dynamic_index_in_dim(ck, i, keepdims=False)
            v_l = jax.lax.dynamic_index_in_dim(cv, i, keepdims=False)
            x, k_l, v_l = nnx.merge(graphdef, layer_state).with_cache(
                x, sin, cos, mask, k_l, v_l, index
            )
            b, k, h = k_l.shape[:3]
            at_k, at_v = (i, 0, 0, 0, index), (i, 0, 0, index, 0)
            k_new = jax.lax.dynamic_slice(k_l, at_k[1:], (b, k, h, t))
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
        return project_to_vocab(hidden_BTD, *self.head_weight(), self.config.dtype)

    def _run_layers(self, x, sin, cos, mask):
        cfg = self.config

        def body(graphdef, state, x):
            return self._pin(nnx.merge(graphdef, state)(x, sin, cos, mask))

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
