"""The end-to-end run: data -> (difficulty split) -> SFT -> GRPO -> eval -> report.

Only the config is imported here: `compile_check` lives in this package and must set
the number of fake CPU devices before anything initialises a JAX backend.
"""

from kardia_jax.pipeline.config import pipeline_config

__all__ = ["pipeline_config"]
