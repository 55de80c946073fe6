"""Tiny Hugging Face checkpoints, built by transformers itself with
`save_pretrained`, one per family variant the decoder must match."""

import pytest

# name -> (transformers config class, kwargs). Shapes are tiny but keep every
# structural feature: GQA (4 heads over 2 kv heads), biases, tied/untied heads,
# Qwen3's explicit head_dim != hidden / heads, rope variants.
_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
)
VARIANTS = {
    "qwen2_tied": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_untied": ("Qwen2Config", dict(tie_word_embeddings=False, rope_theta=1e4)),
    "qwen2_linear_rope": (
        "Qwen2Config",
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
    ),
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=False, rope_theta=1e6)),
    "llama_tied": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=1e5)),
    "llama_bias_llama3_rope": (
        "LlamaConfig",
        dict(
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 5e5,
            },
        ),
    ),
}


def build_hf_model(variant: str, seed: int = 0):
    import torch
    import transformers

    cls_name, kw = VARIANTS[variant]
    config = getattr(transformers, cls_name)(**{**_COMMON, **kw})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so a wrong
    # mapping of either cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """Factory: variant name -> (checkpoint dir, torch model)."""
    made = {}

    def get(variant: str):
        if variant not in made:
            path = tmp_path_factory.mktemp(variant)
            model = build_hf_model(variant)
            model.save_pretrained(path)
            made[variant] = (str(path), model)
        return made[variant]

    return get


def left_padded_batch(vocab: int = 256, seed: int = 0):
    """3 rows of length 12; rows 1 and 2 left-padded by 3 and 7 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, 12)).astype(np.int32)
    mask = np.ones((3, 12), np.int32)
    mask[1, :3] = 0
    mask[2, :7] = 0
    ids[mask == 0] = 0  # pad id
    return ids, mask
