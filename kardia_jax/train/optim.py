"""The optimizer: AdamW behind global-norm clipping, with linear warm-up then
cosine decay (the paper's recipe: AdamW, lr 1e-4 for SFT and 1e-6 for GRPO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(cfg.lr),
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=float(cfg.lr) * float(cfg.min_lr_ratio),
    )


def scale_new_token_rows(factor: float, first_row: int) -> optax.GradientTransformation:
    """Multiplies the updates of vocabulary rows >= `first_row` (the tokens added to
    the tokenizer last, the span markers, in the embedding and an untied head) by
    `factor`.

    New rows start at the mean embedding, whose logit sits ~15 nats below the top
    token; AdamW moves each coordinate by about lr per step, so at lr 1e-4 a span
    marker needs hundreds of steps before it is ever predicted. A short cold start
    (the demo) lets those rows alone move faster; the pretrained rows are untouched."""

    def scale(path, u):
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if "embed_tokens" in name and u.ndim == 2:
            axis = 0  # [V, D]
        elif "lm_head" in name and u.ndim == 2:
            axis = 1  # [D, V]
        else:
            return u
        rows = jax.lax.broadcasted_iota(jnp.int32, u.shape, axis)
        return jnp.where(rows >= first_row, u * jnp.asarray(factor, u.dtype), u)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: ConfigDict, total_steps: int, first_new_row: int | None = None
) -> optax.GradientTransformation:
    """`cfg` is the `train` group of a run config; `first_new_row` is the first id of
    the added tokens (see `new_token_lr_scale`)."""
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    chain.append(
        optax.adamw(
            learning_rate_schedule(cfg, total_steps),
            b1=float(cfg.b1),
            b2=float(cfg.b2),
            eps=float(cfg.eps),
            weight_decay=float(cfg.weight_decay),
        )
    )
    scale = float(cfg.get("new_token_lr_scale", 1.0))
    if scale != 1.0 and first_new_row is not None:
        chain.append(scale_new_token_rows(scale, first_new_row))
    return optax.chain(*chain)
