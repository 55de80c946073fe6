"""Rubric-as-Judge rewards: the format and emotion rewards, a batched judge model
scoring Relevance, Fluency, Empathy, Persona Consistency and Safety on 1-5, and the
paper's combination of the three.

    from kardia_jax import rewards
    judge = rewards.RubricJudge.from_pretrained("path/to/Qwen3-8B", mesh=mesh)
    reward = rewards.KardiaReward(judge)                    # 1/3 each
    out = reward(completions, contexts, gold_emotions)      # out.total [N], out.metrics

Names are imported lazily: the format and emotion rewards need neither JAX nor
transformers.
"""

from __future__ import annotations

from kardia_jax.lazy import lazy_exports

_EXPORTS = {
    "format_reward": "format",
    "format_reasons": "format",
    "emotion_reward": "emotion",
    "predicted_emotions": "emotion",
    "neutralize": "sanitize",
    "candidate_parts": "sanitize",
    "DIMENSIONS": "rubric",
    "Rubric": "rubric",
    "load_rubric": "rubric",
    "JudgeContext": "prompt",
    "JudgePrompt": "prompt",
    "PromptBuilder": "prompt",
    "PromptLimits": "prompt",
    "JudgeConfig": "judge",
    "JudgeResult": "judge",
    "RubricJudge": "judge",
    "parse_scores": "generate",
    "RewardWeights": "combine",
    "RewardBatch": "combine",
    "KardiaReward": "combine",
    "combine_rewards": "combine",
    "rubric_reward": "combine",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
