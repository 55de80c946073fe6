"""The judge's compiled programs: expected rubric scores from the next-token
distribution over the score tokens "1".."5", with the five dimensions sharing one
prefill of their common prefix (`score_shared`) or, for reference and benchmarks,
each dimension reading its whole prompt (`score_naive`).

Pure functions of (graphdef, params, arrays), jitted on shapes: the host buckets
batch and length, so each bucket compiles once; `TRACES` counts compilations.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kardia_jax.models.decoder import positions_from_mask
from kardia_jax.sampling.state import KVCache

TRACES: collections.Counter = collections.Counter()
_SCORES = jnp.arange(1, 6, dtype=jnp.float32)


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def expected_score(hidden_BD, model, score_ids):
    """(expected score [B], probability mass on the score tokens [B]) from final
    hidden states. The distribution is renormalised over the five score tokens (the
    judge may put a little mass elsewhere, e.g. on " 4" vs "4"); the mass it puts on
    them is returned so a prompt the judge does not follow shows up in the logs."""
    logits = model.logits(hidden_BD[:, None, :])[:, 0]  # [B, V] f32
    score_logits = jnp.take(logits, score_ids, axis=-1)  # [B, 5]
    probs = jax.nn.softmax(score_logits, axis=-1)
    mass = jnp.exp(jax.nn.logsumexp(score_logits, -1) - jax.nn.logsumexp(logits, -1))
    return probs @ _SCORES, mass


@functools.partial(
    jax.jit, static_argnums=(0,), static_argnames=("cache_dtype", "sharding", "input_sharding")
)
def score_shared(
    graphdef,
    params,
    prefix_ids,
    prefix_mask,
    suffix_ids,
    suffix_last,
    score_ids,
    *,
    cache_dtype: str,
    sharding=None,
    input_sharding=None,
):
    """Scores [B, 5] and score-token mass [B, 5] for left-padded prefixes [B, P].

    The prefix is prefilled once into a cache of P + S slots. Each dimension's
    suffix (right-padded to S, last real token at `suffix_last`) is then written at
    slots [P, P + S) of that cache and attends to the prefix and to itself: the
    next dimension overwrites the same slots, and since attention is causal no
    query ever sees another dimension's tokens. The cache is carried through a scan
    over the five dimensions, so it is updated in place, never copied.
    """
    TRACES["score_shared"] += 1
    model = nnx.merge(graphdef, params)
    mc = model.config
    b, p = prefix_ids.shape
    s = suffix_ids.shape[1]
    prefix_ids = _constrain(prefix_ids, input_sharding)
    prefix_mask = _constrain(prefix_mask, input_sharding)
    layer_shape = (b, mc.num_kv_heads, p + s, mc.head_dim)
    if mc.scan_layers:
        zeros = _constrain(jnp.zeros((mc.num_layers, *layer_shape), cache_dtype), sharding)
    else:
        zeros = tuple(
            _constrain(jnp.zeros(layer_shape, cache_dtype), sharding) for _ in range(mc.num_layers)
        )
    n_real = jnp.sum(prefix_mask, axis=1, dtype=jnp.int32)
    cache = KVCache(k=zeros, v=zeros, start=p - n_real, index=jnp.int32(0), positions=n_real)
    kv_mask = cache.kv_mask  # real prefix slots and every suffix slot
    _, k, v = model.forward_with_cache(
        prefix_ids, positions_from_mask(prefix_mask), kv_mask, cache.k, cache.v, 0
    )
    positions = n_real[:, None] + jnp.arange(s)[None, :]

    def dimension(carry, xs):
        k, v = carry
        ids_S, last = xs
        ids = jnp.broadcast_to(ids_S[None, :], (b, s))
        hidden, k, v = model.forward_with_cache(ids, positions, kv_mask, k, v, p)
        h = jax.lax.dynamic_index_in_dim(hidden, last, axis=1, keepdims=False)  # [B, D]
        return (k, v), expected_score(h, model, score_ids)

    _, (scores, mass) = jax.lax.scan(dimension, (k, v), (suffix_ids, suffix_last))
    return scores.T, mass.T  # [5, B] -> [B, 5]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("input_sharding",))
def score_naive(graphdef, params, ids_BDT, mask_BDT, score_ids, *, input_sharding=None):
    """The same scores from five full prompts per candidate ([B, 5, T], left-padded
    prefix + suffix): no cache, every dimension re-reads the whole prefix."""
    TRACES["score_naive"] += 1
    model = nnx.merge(graphdef, params)
    b, d, t = ids_BDT.shape
    ids = _constrain(ids_BDT.reshape(b * d, t), input_sharding)
    mask = _constrain(mask_BDT.reshape(b * d, t), input_sharding)
    hidden = model.hidden_states(ids, mask)[:, -1]  # left padding: the last column
    scores, mass = expected_score(hidden, model, score_ids)
    return scores.reshape(b, d), mass.reshape(b, d)
