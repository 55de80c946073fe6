"""The paper's reward, r = w_f r_format + w_e r_emotion + w_r r_rubric (1/3 each by
default), with r_rubric = (mean of the five 1-5 scores - 1) / 4 in [0, 1], returned
with every component and dimension so a run can log what it optimises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rewards.emotion import emotion_reward
from kardia_jax.rewards.format import format_reward
from kardia_jax.rewards.prompt import JudgeContext
from kardia_jax.rewards.rubric import DIMENSIONS


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    format: float = 1 / 3
    emotion: float = 1 / 3
    rubric: float = 1 / 3

    def __post_init__(self):
        if min(self.format, self.emotion, self.rubric) < 0:
            raise ConfigError(f"reward weights must be >= 0: {self}")


def rubric_reward(scores: np.ndarray) -> np.ndarray:
    """[N, 5] scores in [1, 5] -> [N] in [0, 1]: (mean - 1) / 4."""
    scores = np.asarray(scores, np.float32)
    return (scores.mean(axis=-1) - 1.0) / 4.0


def combine_rewards(
    format_r: np.ndarray,
    emotion_r: np.ndarray,
    rubric_scores: np.ndarray | None,
    weights: RewardWeights = RewardWeights(),
) -> dict[str, np.ndarray]:
    """{"total", "format", "emotion", "rubric", "rubric/<dimension>"...}: [N] float32
    each (`rubric_scores` None: rubric weight must be 0; rubric reported as 0)."""
    f = np.asarray(format_r, np.float32)
    e = np.asarray(emotion_r, np.float32)
    if rubric_scores is None:
        if weights.rubric:
            raise ConfigError("rubric weight is non-zero but no rubric scores were given")
        rubric_scores = np.ones((len(f), len(DIMENSIONS)), np.float32)
    dims = np.asarray(rubric_scores, np.float32)
    if not (f.shape == e.shape == dims.shape[:1]) or dims.shape[1:] != (len(DIMENSIONS),):
        raise DataError(f"reward shapes disagree: {f.shape}, {e.shape}, {dims.shape}")
    r = rubric_reward(dims)
    total = weights.format * f + weights.emotion * e + weights.rubric * r
    out = {"total": total.astype(np.float32), "format": f, "emotion": e, "rubric": r}
    out.update({f"rubric/{name}": dims[:, j] for j, name in enumerate(DIMENSIONS)})
    return out


@dataclasses.dataclass
class RewardBatch:
    """The reward of N completions: `total` for the policy gradient, the rest for logs."""

    components: dict[str, np.ndarray]
    metrics: dict[str, float | str]

    @property
    def total(self) -> np.ndarray:
        return self.components["total"]


class KardiaReward:
    """The reward function GRPO calls: completions + their contexts + gold labels ->
    `RewardBatch`. `judge` may be None when the rubric weight is 0."""

    def __init__(
        self,
        judge=None,
        weights: RewardWeights = RewardWeights(),
        *,
        format_partial_credit: bool = False,
        emotion_strict: bool = False,
    ):
        if judge is None and weights.rubric:
            raise ConfigError("a non-zero rubric weight needs a judge")
        self.judge, self.weights = judge, weights
        self.format_partial_credit = format_partial_credit
        self.emotion_strict = emotion_strict

    @classmethod
    def from_mapping(cls, m: Mapping, judge=None) -> KardiaReward:
        m = dict(m)
        weights = RewardWeights(**dict(m.pop("weights", {})))
        return cls(judge, weights, **m)

    def __call__(
        self,
        completions: Sequence[str],
        contexts: Sequence[JudgeContext],
        gold_emotions: Sequence[str],
    ) -> RewardBatch:
        f = format_reward(completions, partial_credit=self.format_partial_credit)
        e = emotion_reward(completions, gold_emotions, strict=self.emotion_strict)
        metrics: dict[str, float | str] = {}
        dims = None
        if self.judge is not None and self.weights.rubric:
            result = self.judge.evaluate(contexts, completions)
            dims = result.scores
            metrics.update(result.metrics())
        comps = combine_rewards(f, e, dims, self.weights)
        metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in comps.items()})
        return RewardBatch(comps, metrics)
