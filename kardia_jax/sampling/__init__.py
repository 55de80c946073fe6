"""The jitted sampler: KV-cache prefill and a compiled decode loop, composable
sampling methods, per-token log-probs and stop handling, for GRPO rollouts and chat."""

from kardia_jax.sampling.loop import compile_counts
from kardia_jax.sampling.methods import SamplingConfig, sample
from kardia_jax.sampling.sampler import Completion, Completions, Sampler, generate
from kardia_jax.sampling.state import KVCache, SamplingState

__all__ = [
    "Completion",
    "Completions",
    "KVCache",
    "Sampler",
    "SamplingConfig",
    "SamplingState",
    "compile_counts",
    "generate",
    "sample",
]
