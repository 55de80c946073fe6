"""The judge's compiled programs: expected rubric scores from the next-token
distribution over the score tokens "1".."5", with the five dimensions sharing one
prefill of their common prefix and all candidates sharing one prefill of the rubric
(`score_shared`) or, for reference and benchmarks, each dimension reading its whole
prompt (`score_naive`).

Pure functions of (graphdef, params, arrays), jitted on shapes: the host buckets
batch and length, so each bucket compiles once (kardia_jax/compiles.py counts them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.models.decoder import positions_from_mask
from kardia_jax.sharding import constrain, constrain_cache

# numpy, not jnp: importing this module must not start a JAX backend.
_SCORES = np.arange(1, 6, dtype=np.float32)


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
    head_ids,
    rest_ids,
    rest_mask,
    suffix_ids,
    suffix_last,
    score_ids,
    *,
    cache_dtype: str,
    sharding=None,
    input_sharding=None,
):
    """Scores [B, 5] and score-token mass [B, 5] of prompts head + rest + suffix.

    Three levels of sharing, one cache of C + P + S slots per row:
    - the head [C] (chat template + rubric, the same for every prompt) runs once,
      for one row, and its keys and values are broadcast to all B rows;
    - each row's rest [P] (context + candidate, left-padded) runs once;
    - each dimension's suffix (right-padded to S, last real token at `suffix_last`)
      is written at slots [C + P, C + P + S) and attends to everything before it
      and to itself; the next dimension overwrites the same slots, and attention
      being causal, no query ever sees another dimension's tokens. The cache rides
      in the carry of a scan over the five dimensions: updated in place, not copied.
    Left padding sits between head and rest; positions count real tokens only, so
    every row sees the positions it would see unpadded.
    """
    model = nnx.merge(graphdef, params)
    c = head_ids.shape[0]
    b, p = rest_ids.shape
    s = suffix_ids.shape[1]
    rest_ids = constrain(rest_ids, input_sharding)
    rest_mask = constrain(rest_mask, input_sharding)

    ones = jnp.ones((1, c + p + s), jnp.int32)
    k0, v0 = model.init_cache(1, c + p + s, cache_dtype)
    _, k1, v1 = model.forward_with_cache(head_ids[None], jnp.arange(c)[None], ones, k0, v0, 0)

    def rows(x):  # one row [.., 1, K, ., .] -> B rows
        return jnp.broadcast_to(x, x.shape[:-4] + (b,) + x.shape[-3:])

    k, v = constrain_cache(jax.tree.map(rows, k1), jax.tree.map(rows, v1), sharding)
    kv_mask = jnp.concatenate(
        [jnp.ones((b, c), jnp.int32), rest_mask, jnp.ones((b, s), jnp.int32)], axis=1
    )
    positions = c + positions_from_mask(rest_mask)
    _, k, v = model.forward_with_cache(rest_ids, positions, kv_mask, k, v, c)
    n_real = c + jnp.sum(rest_mask, axis=1, dtype=jnp.int32)
    positions = n_real[:, None] + jnp.arange(s)[None, :]

    def dimension(carry, xs):
        k, v = carry
        ids_S, last = xs
        ids = jnp.broadcast_to(ids_S[None, :], (b, s))
        hidden, k, v = model.forward_with_cache(ids, positions, kv_mask, k, v, c + p)
        h = jax.lax.dynamic_index_in_dim(hidden, last, axis=1, keepdims=False)  # [B, D]
        return (k, v), expected_score(h, model, score_ids)

    _, (scores, mass) = jax.lax.scan(dimension, (k, v), (suffix_ids, suffix_last))
    return scores.T, mass.T  # [5, B] -> [B, 5]


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("input_sharding",))
def score_naive(graphdef, params, ids_DBT, mask_DBT, score_ids, *, input_sharding=None):
    """The same scores from five full prompts per candidate ([5, B, T], left-padded
    prefix + suffix): no cache, every dimension re-reads the whole prompt. The five
    run one after another (a scan), B rows at a time, as the shared path does."""
    model = nnx.merge(graphdef, params)

    def dimension(_, xs):
        ids, mask = (constrain(x, input_sharding) for x in xs)
        hidden = model.hidden_states(ids, mask)[:, -1]  # left padding: the last column
        return None, expected_score(hidden, model, score_ids)

    _, (scores, mass) = jax.lax.scan(dimension, None, (ids_DBT, mask_DBT))
    return scores.T, mass.T  # [5, B] -> [B, 5]
