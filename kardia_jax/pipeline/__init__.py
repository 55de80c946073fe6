"""The end-to-end run: data -> (difficulty split) -> SFT -> GRPO -> eval -> report."""

from kardia_jax.pipeline.config import pipeline_config
from kardia_jax.pipeline.stages import STAGES, run_pipeline

__all__ = ["STAGES", "pipeline_config", "run_pipeline"]
