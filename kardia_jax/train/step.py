"""The pure SFT step `(state, batch) -> (state, metrics)`: masked token
cross-entropy in float32, gradient accumulation over microbatches with `lax.scan`,
one optax update, and a skipped (state-preserving) update when the loss or the
gradients are not finite.

Batches are dicts of [B, T] arrays: `input_ids`, `attention_mask` (1 = real token)
and `loss_mask` aligned with the inputs (1 = this token is a target, predicted
from the position before it); optionally `positions` and `segment_ids` (packing).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kardia_jax.models.logprobs import sequence_log_probs, weighted_log_prob_sum
from kardia_jax.train.state import TrainState


def target_bucket(batch: dict, multiple: int = 32) -> int:
    """Target positions to reserve per row: the most targets in any row, rounded up to
    a multiple of `multiple` up to 8 x `multiple`, then to a quarter of the power of two
    below it (256 -> 320 -> 384 ...; 1024 -> 1280 ...).

    A turn example has ~100-200 targets, a whole dialogue (data.example="dialogue")
    ~1000: fixed steps of 32 would compile a new step for nearly every batch of
    dialogues, while quarter-octave steps keep a few shapes per length bucket and waste
    at most a quarter of the positions.
    """
    mask = np.asarray(batch["loss_mask"])[:, 1:] > 0
    most = int(mask.sum(1).max(initial=0))
    octave = 1 << (max(most - 1, 1).bit_length() - 1)  # the power of two below `most`
    step = multiple * max(1, octave // 4 // multiple)
    return min(max(multiple, -(-most // step) * step), mask.shape[1])


def with_target_index(batch: dict, k: int) -> dict:
    """Host-side: adds `target_index` [B, K] (positions whose next token is a target)
    and `target_weight` [B, K]; `k` (see `target_bucket`) must hold every row's targets.

    The four-span targets are ~100 of ~700 tokens per example, so projecting only
    those positions onto the 152k vocabulary cuts the LM-head work (most of a small
    model's step) several-fold. K is bucketed, so this adds few compiled shapes.
    """
    mask = np.asarray(batch["loss_mask"])[:, 1:] > 0
    index = np.zeros((mask.shape[0], k), np.int32)
    weight = np.zeros((mask.shape[0], k), np.int32)
    for r, row in enumerate(mask):
        pos = np.flatnonzero(row)
        index[r, : len(pos)] = pos
        weight[r, : len(pos)] = 1
    return {**batch, "target_index": index, "target_weight": weight}


def sum_token_nll(graphdef, params, batch, logit_chunk: int = 256):
    """(sum of target-token negative log-likelihoods, number of target tokens)."""
    model = nnx.merge(graphdef, params)
    ids = batch["input_ids"]
    args = (ids, batch["attention_mask"], batch.get("positions"), batch.get("segment_ids"))
    if "target_index" not in batch:
        logp = sequence_log_probs(model, *args[:3], segment_ids=args[3], chunk=logit_chunk)
        weight = batch["loss_mask"][:, 1:].astype(jnp.float32)
        return -jnp.sum(logp * weight), jnp.sum(weight)
    index = batch["target_index"]
    hidden = jnp.take_along_axis(model.hidden_states(*args), index[..., None], axis=1)
    targets = jnp.take_along_axis(ids, index + 1, axis=1)
    weight = batch["target_weight"].astype(jnp.float32)
    # Linear in log p: the value and its gradient in one pass over the vocabulary.
    logp_sum = weighted_log_prob_sum(model, hidden, targets, weight, chunk=logit_chunk)
    return -logp_sum, jnp.sum(weight)


def _microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...], microbatch i = rows i, i+n, i+2n, ... so each one
    stays spread over every data-parallel shard."""

    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def loss_and_grads(graphdef, params, batch, microbatches: int):
    """Token-mean loss over the whole batch and its gradient, accumulated in f32."""
    grad_fn = jax.value_and_grad(sum_token_nll, argnums=1, has_aux=True)
    if microbatches == 1:
        (nll, tokens), grads = grad_fn(graphdef, params, batch)
    else:

        def body(carry, mb):
            nll, tokens, grads = carry
            (n, t), g = grad_fn(graphdef, params, mb)
            return (nll + n, tokens + t, jax.tree.map(jnp.add, grads, g)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (nll, tokens, grads), _ = jax.lax.scan(
            body, (jnp.zeros(()), jnp.zeros(()), zeros), _microbatches(batch, microbatches)
        )
    denom = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    return nll / denom, tokens, grads


def apply_gradients(state: TrainState, grads, loss, *, tx, max_nonfinite: int):
    """One optax update, skipped (state unchanged but the step counter) when the loss
    or the gradient norm is not finite. After `max_nonfinite` such updates in a row
    the state is halted: nothing changes any more, and the driver stops the run.
    Returns (new state, grad norm, skipped flag)."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & (state.nonfinite_streak < max_nonfinite)

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)

    halted = state.nonfinite_streak >= max_nonfinite
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_streak=jnp.where(
            halted, state.nonfinite_streak, jnp.where(finite, 0, state.nonfinite_streak + 1)
        ),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    return new_state, grad_norm, (~apply).astype(jnp.int32)


def train_step(
    state: TrainState, batch, *, graphdef, tx, microbatches: int, max_nonfinite: int
) -> tuple[TrainState, dict]:
    loss, tokens, grads = loss_and_grads(graphdef, state.params, batch, microbatches)
    new_state, grad_norm, skipped = apply_gradients(
        state, grads, loss, tx=tx, max_nonfinite=max_nonfinite
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm, "tokens": tokens, "skipped": skipped}


def eval_step(params, batch, *, graphdef) -> dict:
    nll, tokens = sum_token_nll(graphdef, params, batch)
    return {"nll": nll, "tokens": tokens}


def step_options(train) -> dict:
    """The `train.*` settings compiled into an update step, read in one place so that
    every builder of a step (SFT and GRPO drivers, compile-check, bench) sees the same."""
    return {
        "microbatches": int(train.microbatches),
        "max_nonfinite": int(train.max_nonfinite),
    }


def jit_train_step(graphdef, tx, state_shardings, bsh, *, microbatches=1, max_nonfinite=5):
    """The jitted SFT step `(state, batch) -> (state, metrics)` with its shardings and
    the state donated (its buffers become the new state's): the one builder for the
    driver, compile-check and the bench."""
    return jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            tx=tx,
            microbatches=int(microbatches),
            max_nonfinite=int(max_nonfinite),
        ),
        in_shardings=(state_shardings, bsh),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )


def jit_eval_step(graphdef):
    """The jitted held-out loss `(params, batch) -> {nll, tokens}`."""
    return jax.jit(functools.partial(eval_step, graphdef=graphdef))
