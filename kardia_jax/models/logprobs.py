"""Per-token log-probabilities without materialising [B, T, V] float32 logits.

With Qwen's 152k vocabulary the full logits of a 8 x 1024 batch take 5 GB in f32 (and
as much again for their gradient). Here the sequence is cut into chunks; each chunk's
logits are formed, reduced to log p(target) (and optionally the entropy), and dropped;
under autodiff the chunk is rematerialised in the backward pass, so peak memory grows
with the chunk size, not with T x V.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kardia_jax.models import cpu_matmul, kernels
from kardia_jax.models.decoder import project_to_vocab
from kardia_jax.models.layers import soft_cap


def _chunk_stats(model, h_BCD, t_BC, with_entropy: bool, temperature: float = 1.0):
    logits = model.logits(h_BCD)  # [B, C, V] f32
    if temperature != 1.0:  # the distribution the sampler drew from
        logits = logits / temperature
    logp, lse = _target_logp(logits, t_BC)
    if not with_entropy:
        return logp, None
    p = jnp.exp(logits - lse[..., None])
    return logp, lse - jnp.sum(p * logits, axis=-1)


def _target_logp(logits, targets):
    """(log p(targets), logsumexp) over the last axis of f32 logits."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return tgt - lse, lse


def _chunk_positions(x_BT, chunk: int):
    """[B, T, ...] -> [n, B, chunk, ...], T zero-padded to n * chunk. Chunks cut the
    positions, never the batch: each chunk holds every row, so under a mesh it is
    spread over all the data-parallel shards like the batch itself."""
    b, t = x_BT.shape[:2]
    n = -(-t // chunk)
    pad = ((0, 0), (0, n * chunk - t)) + ((0, 0),) * (x_BT.ndim - 2)
    x = jnp.pad(x_BT, pad).reshape(b, n, chunk, *x_BT.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unchunk(x_NBC, t: int):
    """[n, B, chunk] -> [B, t], dropping the padding `_chunk_positions` added."""
    n, b, c = x_NBC.shape
    return jnp.moveaxis(x_NBC, 0, 1).reshape(b, n * c)[:, :t]


def token_log_probs(
    model, hidden_BTD, targets_BT, *, chunk: int = 256, with_entropy=False, temperature=1.0
):
    """log p(targets[b, t] | hidden[b, t]) in f32, shape [B, T] (and the entropy of
    each position's distribution when `with_entropy`)."""
    t = hidden_BTD.shape[1]
    chunk = min(chunk, t)
    h = _chunk_positions(hidden_BTD, chunk)
    y = _chunk_positions(targets_BT, chunk)

    @jax.checkpoint  # the backward pass recomputes each chunk's logits
    def body(_, xs):
        logp, ent = _chunk_stats(model, xs[0], xs[1], with_entropy, temperature)
        return None, (logp, ent if with_entropy else jnp.zeros((), jnp.float32))

    _, (logp, ent) = jax.lax.scan(body, None, (h, y))
    if not with_entropy:
        return _unchunk(logp, t)
    return _unchunk(logp, t), _unchunk(ent, t)


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


def weighted_log_prob_sum(model, hidden_BKD, targets_BK, weight_BK, *, chunk: int = 256):
    """sum(weight * log p(targets | hidden)) in f32: the SFT loss's numerator, with
    the gradient formed in the same pass over the vocabulary as the value.

    Differentiated, `token_log_probs` projects each chunk onto the vocabulary three
    times (forward, rematerialised forward, backward: four matmul passes with the
    two of the backward). A loss linear in log p has d/d logits = weight * (onehot -
    softmax), known in the forward pass, so here each chunk's logits are formed once
    and both gradients (hidden states, output weights) accumulate right away: three
    matmul passes, the same peak memory (one chunk's logits, plus the gradient of the
    output weights, which autodiff materialises too). Without differentiation it is
    the plain chunked sum. Chunks are `chunk` positions of every row.
    """
    chunk = min(chunk, hidden_BKD.shape[1])
    weight_BK = weight_BK.astype(jnp.float32)  # padding positions get weight 0
    chunks = tuple(_chunk_positions(x, chunk) for x in (hidden_BKD, targets_BK, weight_BK))
    w_out, vocab_major = model.head_weight()
    cfg = model.config
    dtype, forms = jnp.dtype(cfg.dtype), kernels.of(cfg.kernels)
    return _fused_sum(chunks, w_out, vocab_major, dtype, forms, cfg.final_logit_softcap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fused_sum(chunks, w_out, vocab_major: bool, dtype, kernel_forms: str, cap):
    def body(total, xs):
        h, y, wt = xs
        logits = soft_cap(project_to_vocab(h, w_out, vocab_major, dtype, kernel_forms), cap)
        logp, _ = _target_logp(logits, y)
        return total + jnp.sum(logp * wt), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), chunks)[0]


def _fused_sum_fwd(chunks, w_out, vocab_major: bool, dtype, kernel_forms: str, cap):
    d = chunks[0].shape[-1]
    v = w_out.shape[0] if vocab_major else w_out.shape[1]
    cpu = kernel_forms == "cpu"

    def body(carry, xs):
        total, dw_DV = carry
        h, y, wt = xs  # [B, C, D], [B, C], [B, C]
        logits = soft_cap(project_to_vocab(h, w_out, vocab_major, dtype, kernel_forms), cap)
        logp, lse = _target_logp(logits, y)
        p = jnp.exp(logits - lse[..., None])
        onehot = jax.nn.one_hot(y, v, dtype=jnp.float32)
        g = (onehot - p) * wt[..., None]  # d sum / d logits
        if cap is not None:  # through the soft-cap: d cap*tanh(z/cap) / dz = 1 - tanh^2
            g = g * (1.0 - jnp.square(logits / cap))
        g = g.astype(dtype)
        spec = "BCV,VD->BCD" if vocab_major else "BCV,DV->BCD"
        dh = jnp.einsum(spec, g, w_out.astype(dtype), preferred_element_type=jnp.float32)
        # dW^T [D, V] = h^T g: canonical with only the small h^T moved (on CPU a
        # real transpose; see models/cpu_matmul.py), one transpose at the end.
        h2 = h.astype(dtype).reshape(-1, d)
        h_t = cpu_matmul.transposed(h2) if cpu else h2.T
        dw_DV = dw_DV + jnp.dot(h_t, g.reshape(-1, v), preferred_element_type=jnp.float32)
        return (total + jnp.sum(logp * wt), dw_DV), dh.astype(h.dtype)

    init = (jnp.zeros((), jnp.float32), jnp.zeros((d, v), jnp.float32))
    (total, dw_DV), dh = jax.lax.scan(body, init, chunks)
    dw = dw_DV
    if vocab_major:  # the tied table is [V, D]
        dw = cpu_matmul.transposed(dw_DV) if cpu else dw_DV.T
    return total, (dh, dw.astype(w_out.dtype))


def _fused_sum_bwd(vocab_major, dtype, kernel_forms, cap, res, ct):
    del vocab_major, dtype, kernel_forms, cap
    dh, dw = res
    return (dh * ct.astype(dh.dtype), None, None), dw * ct.astype(dw.dtype)


_fused_sum.defvjp(_fused_sum_fwd, _fused_sum_bwd)
