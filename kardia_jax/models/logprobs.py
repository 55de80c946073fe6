"""Per-token log-probabilities without materialising [B, T, V] float32 logits.

With Qwen's 152k vocabulary the full logits of a 8 x 1024 batch take 5 GB in f32 (and
as much again for their gradient). Here the sequence is cut into chunks; each chunk's
logits are formed, reduced to log p(target) (and optionally the entropy), and dropped;
under autodiff the chunk is rematerialised in the backward pass, so peak memory grows
with the chunk size, not with T x V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunk_stats(model, h_BCD, t_BC, with_entropy: bool, temperature: float = 1.0):
    logits = model.logits(h_BCD)  # [B, C, V] f32
    if temperature != 1.0:  # the distribution the sampler drew from
        logits = logits / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, t_BC[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return tgt - lse, None
    p = jnp.exp(logits - lse[..., None])
    return tgt - lse, lse - jnp.sum(p * logits, axis=-1)


def token_log_probs(
    model, hidden_BTD, targets_BT, *, chunk: int = 256, with_entropy=False, temperature=1.0
):
    """log p(targets[b, t] | hidden[b, t]) in f32, shape [B, T] (and the entropy of
    each position's distribution when `with_entropy`)."""
    b, t, d = hidden_BTD.shape
    chunk = min(chunk, t)
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
    y = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    h = jnp.moveaxis(h.reshape(b, n, chunk, d), 1, 0)
    y = jnp.moveaxis(y.reshape(b, n, chunk), 1, 0)

    @jax.checkpoint  # the backward pass recomputes each chunk's logits
    def body(_, xs):
        logp, ent = _chunk_stats(model, xs[0], xs[1], with_entropy, temperature)
        return None, (logp, ent if with_entropy else jnp.zeros((), jnp.float32))

    _, (logp, ent) = jax.lax.scan(body, None, (h, y))
    logp = jnp.moveaxis(logp, 0, 1).reshape(b, n * chunk)[:, :t]
    if not with_entropy:
        return logp
    return logp, jnp.moveaxis(ent, 0, 1).reshape(b, n * chunk)[:, :t]


def sequence_log_probs(
    model,
    input_ids,
    attention_mask=None,
    positions=None,
    *,
    chunk=256,
    segment_ids=None,
    with_entropy=False,
):
    """log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) for t < T - 1: shape [B, T - 1]."""
    hidden = model.hidden_states(input_ids, attention_mask, positions, segment_ids)
    return token_log_probs(
        model, hidden[:, :-1], input_ids[:, 1:], chunk=chunk, with_entropy=with_entropy
    )
