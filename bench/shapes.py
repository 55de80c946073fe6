"""Model shapes the benchmark scripts share: the published SmolLM2-135M and
Qwen2.5-0.5B presets, and a 4-layer model for quick runs. Random weights only."""

from __future__ import annotations

import dataclasses

from kardia_jax.models import ModelConfig, get_preset


def smollm2_135m(vocab: int = 49_152) -> ModelConfig:
    return dataclasses.replace(get_preset("smollm2_135m"), vocab_size=vocab)


def tiny(vocab: int = 4096) -> ModelConfig:
    return ModelConfig(
        family="qwen2",
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        qkv_bias=True,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )


MODELS = {
    "tiny": {"tiny": tiny},
    "full": {"smollm2_135m": smollm2_135m, "qwen2p5_0p5b": lambda: get_preset("qwen2p5_0p5b")},
}
