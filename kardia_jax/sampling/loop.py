"""The compiled programs of the sampler: `prefill` (all prompts in one pass, the
cache copied across each group, the first token drawn), `decode` (a
`lax.while_loop` that stops when few enough rows are left or a step limit is hit)
and `compact` (the live rows of a state gathered into a smaller batch).

Both are pure functions of (graphdef, params, arrays); `jit` keys them on shapes
and the static sampling config, and `compile_counts` says how many programs each one
compiled (a bounded number by construction: see `Sampler`'s buckets).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.compiles import CompileCounter
from kardia_jax.models import kernels
from kardia_jax.models.decoder import cache_for_decode, positions_from_mask
from kardia_jax.models.layers import soft_cap
from kardia_jax.sampling.methods import SamplingConfig, sample
from kardia_jax.sampling.state import EOS, LENGTH, STOP, KVCache, SamplingState
from kardia_jax.sharding import constrain_cache

_COMPILES = CompileCounter()
# `decode`'s default `min_live`: a strongly typed int32, as `Sampler.decode` passes it,
# so a caller relying on the default lowers the program the sampler runs.
_ALL_FINISHED = np.int32(0)


def compile_counts() -> dict[str, int]:
    """Programs compiled since import, per sampler program ("prefill", "decode",
    "compact")."""
    names = _COMPILES.by_name()
    programs = ("prefill", "decode", "compact")
    return {n: names[f"jit({n})"] for n in programs if f"jit({n})" in names}


def _is_in(tokens_B, ids_E):
    return jnp.any(tokens_B[:, None] == ids_E[None, :], axis=-1)


def row_keys(key, rows_B, step):
    """[B] keys of decode step `step`: row r draws from fold_in(fold_in(key, r), step),
    whichever rows share its batch and wherever it sits in it."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), step))(rows_B)


def step_logits(model, hidden_B1D):
    """`model.logits` for the one new position of a decode step, [B, V] f32.

    With CPU kernels and a tied embedding the projection is a multiply-reduce over D with
    the vocabulary outermost: for a handful of rows it streams the [V, D] table
    faster than XLA:CPU's matmul does (reading a transposed operand), and
    that table is the largest single read of a step (152k x 896 floats for
    Qwen2.5-0.5B). Other backends and untied heads use the model's own projection.
    Either way the logits are the model's, its final soft-cap (Gemma 2) included.
    """
    w_out, vocab_major = model.head_weight()
    if not (vocab_major and kernels.of(model.config.kernels) == "cpu"):
        return model.logits(hidden_B1D)[:, 0]
    dtype = jnp.dtype(model.config.dtype)
    emb_VD = w_out.astype(dtype)
    h_BD = hidden_B1D[:, 0].astype(dtype)
    logits_VB = jnp.sum(emb_VD[:, None, :] * h_BD[None, :, :], axis=-1, dtype=jnp.float32)
    return soft_cap(logits_VB.T, model.config.final_logit_softcap)


def record(state: SamplingState, tokens_B, logprobs_B, pad_id: int) -> SamplingState:
    """Writes the tokens drawn at `state.step` and updates who has finished and why.

    A stop token is part of the completion (the policy chose it; GRPO trains on
    it); rows that had already finished get `pad_id` and log-prob 0.
    """
    live = ~state.done
    tokens_B = jnp.where(live, tokens_B, pad_id)
    logprobs_B = jnp.where(live, logprobs_B, 0.0)
    at = (0, state.step)
    tokens = jax.lax.dynamic_update_slice(state.tokens, tokens_B[:, None], at)
    logprobs = jax.lax.dynamic_update_slice(state.logprobs, logprobs_B[:, None], at)
    step = state.step + 1
    is_eos = live & _is_in(tokens_B, state.eos_ids)
    is_stop = live & ~is_eos & _is_in(tokens_B, state.stop_ids)
    out_of_budget = live & ~is_eos & ~is_stop & (step >= state.max_new)
    reason = jnp.where(is_eos, EOS, jnp.where(is_stop, STOP, state.reason))
    reason = jnp.where(out_of_budget, LENGTH, reason)
    return state.replace(
        tokens=tokens,
        logprobs=logprobs,
        step=step,
        done=state.done | is_eos | is_stop | out_of_budget,
        reason=reason,
        lengths=state.lengths + live.astype(jnp.int32),
    )


@functools.partial(
    jax.jit,
    static_argnums=(0,),
    static_argnames=("cfg", "group", "budget", "cache_len", "pad_id", "cache_dtype", "sharding"),
)
def prefill(
    graphdef,
    params,
    prompt_ids,
    prompt_mask,
    row_valid,
    eos_ids,
    stop_ids,
    key,
    max_new,
    *,
    cfg: SamplingConfig,
    group: int,
    budget: int,
    cache_len: int,
    pad_id: int,
    cache_dtype: str,
    sharding=None,
) -> SamplingState:
    """Runs the left-padded prompts [B, P] once, copies each prompt's cache to its
    `group` rows, and draws every row's first token.

    `row_valid` [B * group] is False for rows that only pad the batch to its
    bucket: they start finished, so they never keep the loop running.
    """
    model = nnx.merge(graphdef, params)
    b, p = prompt_ids.shape
    k0, v0 = model.init_cache(b, p, cache_dtype)
    positions = positions_from_mask(prompt_mask)
    hidden, k, v = model.forward_with_cache(prompt_ids, positions, prompt_mask, k0, v0, 0)
    # Only the last position's logits are needed: skips a [B, P, V] projection.
    # (`model.logits`, not `step_logits`: with a single prompt row XLA:CPU turns the
    # latter's reduce into something much slower; the decode loop has >= 2 rows.)
    logits = model.logits(hidden[:, -1:])[:, 0]

    def rows(x, axis=0):  # prompt i -> rows i*G .. i*G + G-1
        return x if group == 1 else jnp.repeat(x, group, axis=axis)

    # B rows -> B*G (the batch axis of [.., B, K, ., .]); P slots -> cache_len, the
    # sliding layers in rings of their window when it is shorter.
    k, v = (jax.tree.map(lambda x: rows(x, axis=x.ndim - 4), c) for c in (k, v))
    k, v = constrain_cache(*cache_for_decode(model.config, k, v, cache_len), sharding)
    n_real = rows(jnp.sum(prompt_mask, axis=1, dtype=jnp.int32))
    cache = KVCache(
        k=k,
        v=v,
        start=p - n_real,
        index=jnp.int32(p),
        positions=n_real,
        num_slots=cache_len,
    )
    bg = b * group
    state = SamplingState(
        cache=cache,
        tokens=jnp.full((bg, budget), pad_id, jnp.int32),
        logprobs=jnp.zeros((bg, budget), jnp.float32),
        step=jnp.int32(0),
        done=~row_valid,
        reason=jnp.zeros((bg,), jnp.int32),
        lengths=jnp.zeros((bg,), jnp.int32),
        rows=jnp.arange(bg, dtype=jnp.int32),
        key=key,
        eos_ids=eos_ids,
        stop_ids=stop_ids,
        max_new=jnp.asarray(max_new, jnp.int32),
    )
    tokens, logprobs = sample(rows(logits), row_keys(key, state.rows, 0), cfg)
    return record(state, tokens, logprobs, pad_id)


@functools.partial(
    jax.jit,
    static_argnums=(0,),
    static_argnames=("cfg", "pad_id", "sharding"),
    # The state (cache included) is donated: the loop updates it in place, so
    # decoding never holds two caches.
    donate_argnums=(2,),
)
def decode(
    graphdef,
    params,
    state: SamplingState,
    until,
    min_live=_ALL_FINISHED,
    *,
    cfg: SamplingConfig,
    pad_id: int,
    sharding=None,
) -> SamplingState:
    """Decodes until at most `min_live` rows are still running (0: all finished) or
    `state.step` reaches `until`. Both are traced ints, so streaming in chunks and
    stopping to compact (`Sampler.__call__`) reuse the same program."""
    model = nnx.merge(graphdef, params)
    limit = jnp.minimum(jnp.asarray(until, jnp.int32), state.max_new)
    min_live = jnp.asarray(min_live, jnp.int32)

    def cond(s: SamplingState):
        return (s.step < limit) & (jnp.sum(~s.done, dtype=jnp.int32) > min_live)

    def body(s: SamplingState):
        c = s.cache
        last = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)
        hidden, k, v = model.forward_with_cache(
            last, c.positions[:, None], c.kv_mask, c.k, c.v, c.index
        )
        logits = step_logits(model, hidden)
        tokens, logprobs = sample(logits, row_keys(s.key, s.rows, s.step), cfg)
        k, v = constrain_cache(k, v, sharding)
        cache = c.replace(
            k=k,
            v=v,
            index=c.index + 1,
            positions=c.positions + 1,
        )
        return record(s.replace(cache=cache), tokens, logprobs, pad_id)

    return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("sharding",))
def compact(state: SamplingState, index, valid, *, sharding=None) -> SamplingState:
    """The rows `index` [B'] of `state` as a state of B' rows: every cache layer (rings
    and stacks alike) along its batch axis and every per-row array; rows with `valid`
    False only pad the batch and start finished.

    Not donated: the old and new caches differ in shape, so XLA could not reuse the
    buffers; the caller drops the old state, which frees it once this has run.
    """

    def take(x, axis=0):
        return jnp.take(x, index, axis=axis, mode="clip")

    c = state.cache
    # Cache arrays are [.., B, K, ., .] (`decoder.cache_shapes`), a leading [L] if scanned.
    k, v = (jax.tree.map(lambda x: take(x, x.ndim - 4), t) for t in (c.k, c.v))
    k, v = constrain_cache(k, v, sharding)
    cache = c.replace(k=k, v=v, start=take(c.start), positions=take(c.positions))
    return state.replace(
        cache=cache,
        tokens=take(state.tokens),
        logprobs=take(state.logprobs),
        done=take(state.done) | ~valid,
        reason=take(state.reason),
        lengths=take(state.lengths),
        rows=take(state.rows),
    )
