"""Named model presets: the published shapes of the Qwen2.5 and Qwen3 checkpoints the
paper uses (backbones and judge), and of SmolLM2-135M-Instruct (the demo's real
model), for shape-only planning, benchmarks and tests without weights.

Loading a real checkpoint always goes through its own `config.json`
(`ModelConfig.from_pretrained`); these presets only mirror those files.
"""

from __future__ import annotations

import functools

from kardia_jax.errors import ConfigError
from kardia_jax.models.config import ModelConfig

_QWEN_EOS = 151645  # <|im_end|>; instruct checkpoints stop on it
_QWEN_BOS = 151643  # <|endoftext|>


def _qwen2p5(hidden, inter, layers, heads, kv_heads, *, vocab, tied, eps) -> ModelConfig:
    return ModelConfig(
        family="qwen2",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        rope_theta=1_000_000.0,
        rms_norm_eps=eps,
        tie_word_embeddings=tied,
        qkv_bias=True,
        max_position_embeddings=32_768,
        bos_token_id=_QWEN_BOS,
        eos_token_id=_QWEN_EOS,
    )


def qwen2p5_0p5b() -> ModelConfig:
    return _qwen2p5(896, 4864, 24, 14, 2, vocab=151_936, tied=True, eps=1e-6)


def qwen2p5_1p5b() -> ModelConfig:
    return _qwen2p5(1536, 8960, 28, 12, 2, vocab=151_936, tied=True, eps=1e-6)


def qwen2p5_3b() -> ModelConfig:
    return _qwen2p5(2048, 11008, 36, 16, 2, vocab=151_936, tied=True, eps=1e-6)


def qwen2p5_7b() -> ModelConfig:
    return _qwen2p5(3584, 18944, 28, 28, 4, vocab=152_064, tied=False, eps=1e-6)


def qwen2p5_14b() -> ModelConfig:
    return _qwen2p5(5120, 13824, 48, 40, 8, vocab=152_064, tied=False, eps=1e-5)


def qwen2p5_32b() -> ModelConfig:
    return _qwen2p5(5120, 27648, 64, 40, 8, vocab=152_064, tied=False, eps=1e-5)


def qwen2p5_72b() -> ModelConfig:
    return _qwen2p5(8192, 29568, 80, 64, 8, vocab=152_064, tied=False, eps=1e-5)


def qwen3_8b() -> ModelConfig:
    """The paper's training judge."""
    return ModelConfig(
        family="qwen3",
        vocab_size=151_936,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        qk_norm=True,
        max_position_embeddings=40_960,
        bos_token_id=_QWEN_BOS,
        eos_token_id=_QWEN_EOS,
    )


def smollm2_135m() -> ModelConfig:
    """HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture, the demo's model."""
    return ModelConfig(
        family="llama",
        vocab_size=49_152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    )


PRESETS = {
    "qwen2p5_0p5b": qwen2p5_0p5b,
    "qwen2p5_1p5b": qwen2p5_1p5b,
    "qwen2p5_3b": qwen2p5_3b,
    "qwen2p5_7b": qwen2p5_7b,
    "qwen2p5_14b": qwen2p5_14b,
    "qwen2p5_32b": qwen2p5_32b,
    "qwen2p5_72b": qwen2p5_72b,
    "qwen3_8b": qwen3_8b,
    "smollm2_135m": smollm2_135m,
}


@functools.cache
def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()
