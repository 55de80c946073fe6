"""Rubric-ERL's GRPO stage. Import-light: only the pure math is exported here; steps and
drivers are imported from their own modules."""

from kardia_jax.rl.core import (
    AGG_MODES,
    KL_ESTIMATORS,
    LOG_RATIO_BOUND,
    aggregate,
    group_advantages,
    kl_penalty,
    policy_loss,
)

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "LOG_RATIO_BOUND",
    "aggregate",
    "group_advantages",
    "kl_penalty",
    "policy_loss",
]
