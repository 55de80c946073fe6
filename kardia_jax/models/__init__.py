"""Decoder models (Qwen2/2.5, Qwen3, Llama, Gemma 1 / 2 / 3), their Hugging Face
checkpoints, and GGUF import (llama.cpp files, SmolLM2-135M-Instruct, Gemma-3-270M)."""

from kardia_jax.models.checkpoint import (
    check_hf_checkpoint,
    load_hf_model,
    resize_token_embeddings,
    save_hf_model,
)
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.decoder import Transformer, abstract_model, count_params, init_model
from kardia_jax.models.gguf import (
    gemma3_270m_checkpoint,
    gguf_checkpoint,
    import_gguf,
    smollm2_checkpoint,
)
from kardia_jax.models.presets import PRESETS, get_preset

__all__ = [
    "PRESETS",
    "ModelConfig",
    "Transformer",
    "abstract_model",
    "check_hf_checkpoint",
    "count_params",
    "gemma3_270m_checkpoint",
    "get_preset",
    "gguf_checkpoint",
    "import_gguf",
    "init_model",
    "load_hf_model",
    "resize_token_embeddings",
    "save_hf_model",
    "smollm2_checkpoint",
]
