"""kardia-jax: a JAX/TPU-native reimplementation of Kardia-R1 (four-span empathetic
reasoning, cold-start SFT and rubric-rewarded GRPO)."""

__version__ = "0.1.0"
