"""Named model presets: the published shapes of the Qwen2.5, Qwen3 and Gemma
checkpoints the paper uses (backbones and judge) and their Gemma 2 / 3 successors,
and of SmolLM2-135M-Instruct (the demo's real model), for shape-only planning,
benchmarks and tests without weights.

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


_GEMMA_BOS, _GEMMA_EOS, _GEMMA_PAD = 2, 1, 0  # <bos>, <eos>, <pad> of every Gemma vocabulary


def _gemma(hidden, inter, layers, heads, kv_heads) -> ModelConfig:
    """google/gemma-2b, -7b (config.json of the base checkpoints)."""
    return ModelConfig(
        family="gemma",
        vocab_size=256_000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=256,
        rope_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="gelu_pytorch_tanh",
        scale_embeddings=True,
        norm_plus_one=True,
        max_position_embeddings=8192,
        bos_token_id=_GEMMA_BOS,
        eos_token_id=_GEMMA_EOS,
        pad_token_id=_GEMMA_PAD,
    )


def gemma_2b() -> ModelConfig:
    """The paper's Gemma-2B (multi-query: one kv head)."""
    return _gemma(2048, 16_384, 18, 8, 1)


def gemma_7b() -> ModelConfig:
    """The paper's Gemma-7B."""
    return _gemma(3072, 24_576, 28, 16, 16)


def _gemma2(hidden, inter, layers, heads, kv_heads) -> ModelConfig:
    """google/gemma-2-2b, -9b: sandwich norms, soft-capping, sliding layers alternating
    with global ones (the first sliding)."""
    return _gemma(hidden, inter, layers, heads, kv_heads).replace(
        family="gemma2",
        sandwich_norms=True,
        query_pre_attn_scalar=256.0,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        layer_types=tuple(("sliding_attention", "full_attention")[i % 2] for i in range(layers)),
        sliding_window=4096,
    )


def gemma2_2b() -> ModelConfig:
    return _gemma2(2304, 9216, 26, 8, 4)


def gemma2_9b() -> ModelConfig:
    return _gemma2(3584, 14_336, 42, 16, 8)


def _gemma3(hidden, inter, layers, heads, kv_heads, *, vocab, window, max_pos, **rope):
    """google/gemma-3-*: five sliding layers to one global, QK-norm, local rope base
    10k and global 1M (the 4B scales its global rope linearly)."""
    return _gemma(hidden, inter, layers, heads, kv_heads).replace(
        family="gemma3_text",
        vocab_size=vocab,
        qk_norm=True,
        sandwich_norms=True,
        query_pre_attn_scalar=256.0,
        layer_types=tuple(
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)
        ),
        sliding_window=window,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        max_position_embeddings=max_pos,
        **rope,
    )


def gemma3_270m() -> ModelConfig:
    """google/gemma-3-270m (issue 20's offline GGUF is this model)."""
    return _gemma3(640, 2048, 18, 4, 1, vocab=262_144, window=512, max_pos=32_768)


def gemma3_1b() -> ModelConfig:
    return _gemma3(1152, 6912, 26, 4, 1, vocab=262_144, window=512, max_pos=32_768)


def gemma3_4b() -> ModelConfig:
    """The text decoder of google/gemma-3-4b (a multimodal checkpoint: `text_config`)."""
    return _gemma3(
        2560,
        10_240,
        34,
        8,
        4,
        vocab=262_208,
        window=1024,
        max_pos=131_072,
        rope_type="linear",
        rope_factor=8.0,
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
    "gemma_2b": gemma_2b,
    "gemma_7b": gemma_7b,
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma3_270m": gemma3_270m,
    "gemma3_1b": gemma3_1b,
    "gemma3_4b": gemma3_4b,
}


@functools.cache
def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()
