"""The GRPO update: a pure, jitted `(state, batch) -> (state, metrics)` over one
minibatch of rollouts, with the clipped surrogate and a KL penalty to the frozen
reference, both aggregated by the same `agg` mode.

Rollout batch layout (R = prompts x group size, P prompt columns, N completion
columns): prompts are left-padded so every prompt ends at column P - 1 and every
completion starts at column P. The positions that predict completion tokens are
then the static slice [P - 1, P + N - 1): no gather, and the LM head sees only N
positions per row.
  input_ids, attention_mask  [R, P + N]
  completion_mask            [R, N]  1 on sampled tokens (the stop token included)
  old_logp, ref_logp         [R, N]  log-probs of those tokens (0 elsewhere)
  advantages                 [R]

Rows are prompt-major (row i * G + g is sample g of prompt i), so with `group` set
the forward runs each group's prompt once (`Transformer.shared_prefix_hidden_states`)
instead of once per row; the microbatches are then cut by whole groups.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kardia_jax.errors import ConfigError
from kardia_jax.models.logprobs import token_log_probs
from kardia_jax.rl.config import old_logp_source
from kardia_jax.rl.core import aggregate, kl_penalty, policy_loss
from kardia_jax.sharding import shards_along
from kardia_jax.train.state import TrainState
from kardia_jax.train.step import apply_gradients


@dataclasses.dataclass(frozen=True)
class GRPOLoss:
    """Static settings of the objective (hashable: part of the compiled step)."""

    beta: float = 0.04  # KL coefficient; 0 skips the reference model entirely
    clip_low: float = 0.2
    clip_high: float = 0.2
    agg: str = "token-mean"
    kl_estimator: str = "k3"
    dual_clip: float | None = None
    norm: float | None = None  # seq-mean-token-sum-norm's constant (max completion length)
    temperature: float = 1.0  # the sampling temperature: ratios compare like with like
    logit_chunk: int = 256
    # The update is on-policy (one pass, one minibatch): the old policy is the one
    # being trained, so old_logp is stop_gradient(logp) of the update's own forward
    # (ratio 1 in value, its gradient the policy gradient) and the batch's is unused.
    on_policy: bool = False
    # G when the rows handed over are whole groups of G completions of one prompt,
    # in order: each prompt is run once per group (0: every row runs its prompt).
    group: int = 0

    @classmethod
    def from_config(cls, config) -> GRPOLoss:
        """The objective of a GRPO config (`grpo.*`, and the rollout's length and
        temperature), read in one place for the driver, compile-check and the bench."""
        g = config.grpo
        return cls(
            beta=float(g.beta),
            clip_low=float(g.clip_low),
            clip_high=float(g.clip_high),
            agg=g.agg,
            kl_estimator=g.kl_estimator,
            dual_clip=float(g.dual_clip) if g.dual_clip else None,
            norm=float(config.rollout.max_new_tokens),
            temperature=float(config.rollout.temperature),
            on_policy=old_logp_source(config) == "current",
            group=int(config.rollout.group_size) if g.shared_prompt else 0,
        )


def shared_prompt_fallback(rows: int, group: int, parts: int = 1, shards: int = 1) -> str | None:
    """Why `rows` completions in `parts` microbatches cannot run their prompts once
    per group of `group` on `shards` data-parallel shards; None when they can. Each
    part must hold whole groups, as many as the batch axis splits evenly (a shared
    prompt row is one group: uneven, the plain forward is better spread)."""
    if group < 2:
        return "no groups"
    if rows % (group * parts):
        return f"{rows} completions do not split into {parts} parts of whole groups of {group}"
    if (rows // group // parts) % shards:
        return f"{rows // group // parts} groups per part do not split over {shards} batch shards"
    return None


def _model_shards(model) -> int:
    sharding = model.activation_sharding
    return 1 if sharding is None else shards_along(sharding)


def completion_log_probs(
    model,
    input_ids,
    attention_mask,
    n: int,
    *,
    chunk=256,
    entropy=False,
    temperature=1.0,
    group: int = 0,
):
    """log p(completion token) [R, N] at `temperature` (and each position's entropy).
    With `group` G, rows are whole groups of G sharing their prompt, in order: each
    prompt is run once (the plain forward where `shared_prompt_fallback` says no)."""
    r, t = input_ids.shape
    p = t - n
    if shared_prompt_fallback(r, group, shards=_model_shards(model)) is None:
        hidden = shared_prompt_hidden(model, input_ids, attention_mask, n, group)
    else:
        hidden = model.hidden_states(input_ids, attention_mask)[:, p - 1 : p + n - 1]
    return token_log_probs(
        model, hidden, input_ids[:, p:], chunk=chunk, with_entropy=entropy, temperature=temperature
    )


def shared_prompt_hidden(model, input_ids, attention_mask, n: int, group: int):
    """The hidden states [R, N, D] that predict the N completion tokens of rows in whole
    groups of `group` (the prompt taken from each group's first row): the last prompt
    position's, from the prompt pass, then the completion's own but its last token
    (whose prediction nothing reads, and whose key no query sees)."""
    r, t = input_ids.shape
    p, b = t - n, r // group

    def prompts(x):
        return x.reshape(b, group, t)[:, 0, :p]

    h_prompt, h_rest = model.shared_prefix_hidden_states(
        prompts(input_ids),
        prompts(attention_mask),
        input_ids[:, p : t - 1],
        attention_mask[:, p : t - 1],
    )
    last = jnp.repeat(h_prompt[:, -1:], group, axis=0)
    return jnp.concatenate([last, h_rest], axis=1)


def _policy_log_probs(graphdef, params, input_ids, attention_mask, *, n, chunk, temperature, group):
    model = nnx.merge(graphdef, params)
    return completion_log_probs(
        model, input_ids, attention_mask, n, chunk=chunk, temperature=temperature, group=group
    )


def jit_log_probs(loss: GRPOLoss, n: int, *, params_shardings=None, bsh=None):
    """The jitted log-prob forward `(graphdef, params, input_ids, attention_mask) ->
    [R, n]` of the reference and old policies (graphdef static: one function serves
    both models): the one builder for the driver, compile-check and the bench.
    Shardings left out are taken from the arguments."""
    fn = functools.partial(
        _policy_log_probs,
        n=int(n),
        chunk=loss.logit_chunk,
        temperature=loss.temperature,
        group=loss.group,
    )
    if params_shardings is None and bsh is None:
        return jax.jit(fn, static_argnums=0)
    return jax.jit(fn, static_argnums=0, in_shardings=(params_shardings, bsh, bsh))


def _objective(params, graphdef, batch, loss: GRPOLoss, num_tokens, num_seqs, group):
    """The loss of (part of) a minibatch, normalised by the whole minibatch's token and
    sequence counts, so microbatch losses and gradients simply add up; `group` as in
    `completion_log_probs` (0 where the part is not whole groups)."""
    model = nnx.merge(graphdef, params)
    mask = batch["completion_mask"].astype(jnp.float32)
    n = mask.shape[1]
    logp, entropy = completion_log_probs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        n,
        chunk=loss.logit_chunk,
        entropy=True,
        temperature=loss.temperature,
        group=group,
    )
    old_logp = jax.lax.stop_gradient(logp) if loss.on_policy else batch["old_logp"]
    norms = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm=loss.norm)
    pg, pg_metrics = policy_loss(
        logp,
        old_logp,
        batch["advantages"],
        mask,
        clip_low=loss.clip_low,
        clip_high=loss.clip_high,
        agg=loss.agg,
        dual_clip=loss.dual_clip,
        **norms,
    )
    # Token-mean diagnostics of this part, weighted by its share of the tokens; the
    # extremes and the token count are not means (the count's parts simply add up).
    share = jnp.sum(mask) / num_tokens
    unweighted = ("ratio_min", "ratio_max", "num_tokens")
    metrics = {k: v * share for k, v in pg_metrics.items() if k not in unweighted}
    metrics.update({k: pg_metrics[k] for k in unweighted if k in pg_metrics})
    metrics["entropy"] = aggregate(entropy, mask, "token-mean", num_tokens=num_tokens)
    metrics["pg_loss"] = pg
    total = pg
    if loss.beta > 0:
        per_token = kl_penalty(logp, batch["ref_logp"], mask, loss.kl_estimator)
        kl = aggregate(per_token, mask, loss.agg, **norms)
        total = total + loss.beta * kl
        metrics["kl"] = kl
    metrics["loss"] = total
    return total, metrics


def grpo_step(
    state: TrainState,
    batch,
    *,
    graphdef,
    tx,
    loss: GRPOLoss,
    microbatches: int = 1,
    max_nonfinite: int = 5,
) -> tuple[TrainState, dict]:
    """One optimizer update on a minibatch of rollouts (gradients accumulated over
    `microbatches` with a scan; the result equals the single-pass update). With
    `loss.group` the microbatches are whole groups (`shared_prompt_fallback`)."""
    mask = batch["completion_mask"] > 0
    rows = mask.shape[0]
    num_tokens = jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)
    num_seqs = jnp.maximum(jnp.sum(jnp.any(mask, axis=1), dtype=jnp.float32), 1.0)
    grad_fn = jax.value_and_grad(_objective, has_aux=True)
    # Groups are kept whole only where each microbatch gets whole groups.
    group = loss.group if shared_prompt_fallback(rows, loss.group, microbatches) is None else 0
    args = (graphdef,)
    if microbatches == 1:
        (_, metrics), grads = grad_fn(state.params, *args, batch, loss, num_tokens, num_seqs, group)
    else:
        unit = max(group, 1)  # rows that stay together

        def split(x):
            x = x.reshape(rows // (unit * microbatches), microbatches, unit, *x.shape[1:])
            # microbatch i = groups (rows without groups) i, i + n, ...
            return jnp.swapaxes(x, 0, 1).reshape(microbatches, rows // microbatches, *x.shape[3:])

        def body(carry, mb):
            (_, m), g = grad_fn(state.params, *args, mb, loss, num_tokens, num_seqs, group)
            grads, metrics = carry
            extremes = {"ratio_min": jnp.minimum, "ratio_max": jnp.maximum}
            metrics = {k: extremes.get(k, jnp.add)(metrics[k], m[k]) for k in metrics}
            return (jax.tree.map(jnp.add, grads, g), metrics), None

        mbs = jax.tree.map(split, batch)
        first = jax.tree.map(lambda x: x[0], mbs)
        shapes = jax.eval_shape(
            lambda: grad_fn(state.params, *args, first, loss, num_tokens, num_seqs, group)[0][1]
        )
        init_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
        init_metrics["ratio_min"] = jnp.full((), jnp.inf)
        init_metrics["ratio_max"] = jnp.full((), -jnp.inf)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, metrics), _ = jax.lax.scan(body, (zeros, init_metrics), mbs)

    new_state, grad_norm, skipped = apply_gradients(
        state, grads, metrics["loss"], tx=tx, max_nonfinite=max_nonfinite
    )
    return new_state, dict(metrics, grad_norm=grad_norm, skipped=skipped)


# Per-row vectors of an update batch (sharded over the batch axis in one dimension).
VECTOR_KEYS = ("advantages",)
_MATRIX_KEYS = ("input_ids", "attention_mask", "completion_mask", "old_logp", "ref_logp")


def update_shardings(bsh, vsh) -> dict:
    """The update batch's shardings: `bsh` for [R, T] arrays, `vsh` for [R] vectors."""
    return {**{k: bsh for k in _MATRIX_KEYS}, **{k: vsh for k in VECTOR_KEYS}}


def check_microbatches(rows: int, microbatches: int) -> None:
    """Each optimizer step's `rows` completions must split into `microbatches` parts."""
    if microbatches < 1 or rows % microbatches:
        raise ConfigError(
            f"train.microbatches={microbatches}: the GRPO update's {rows} completions "
            "(rollout.global_batch / grpo.minibatches) must split into that many parts"
        )


def jit_grpo_update(
    graphdef, tx, loss: GRPOLoss, state_shardings, bsh, vsh, *, microbatches=1, max_nonfinite=5
):
    """The jitted GRPO update `(state, batch) -> (state, metrics)` with its shardings
    and the state donated: the one builder for the driver, compile-check and the bench,
    so that a setting such as `train.microbatches` reaches all three alike."""
    return jax.jit(
        functools.partial(
            grpo_step,
            graphdef=graphdef,
            tx=tx,
            loss=loss,
            microbatches=int(microbatches),
            max_nonfinite=int(max_nonfinite),
        ),
        in_shardings=(state_shardings, update_shardings(bsh, vsh)),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
