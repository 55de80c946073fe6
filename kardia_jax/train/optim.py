"""The optimizer: AdamW behind global-norm clipping, with linear warm-up then
cosine decay (the paper's recipe: AdamW, lr 1e-4 for SFT and 1e-6 for GRPO)."""

from __future__ import annotations

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


def make_optimizer(cfg: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """`cfg` is the `train` group of a run config."""
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
    return optax.chain(*chain)
