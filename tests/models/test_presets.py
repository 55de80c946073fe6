"""Full-size presets, checked for shapes only (`jax.eval_shape`: no memory, no FLOPs),
and the Gemma presets against their published config.json, counted by transformers."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from kardia_jax.errors import ConfigError
from kardia_jax.models import PRESETS, ModelConfig, abstract_model, count_params, get_preset

# Published totals: the model cards' figures, and where a card rounds coarsely, the
# checkpoint's own total (model.safetensors.index.json total_size / 2 bytes of bf16).
PUBLISHED = {
    "qwen2p5_0p5b": 494_032_768,
    "qwen2p5_1p5b": 1_543_714_304,
    "qwen2p5_3b": 3.09e9,
    "qwen2p5_7b": 7.62e9,
    "qwen2p5_14b": 14.7e9,
    "qwen2p5_32b": 32_763_876_352,
    "qwen2p5_72b": 72.7e9,
    "qwen3_8b": 8.19e9,
    "smollm2_135m": 134_515_008,
    # Gemma: the totals of the model cards / checkpoint indexes (bf16 total_size / 2),
    # each also counted by transformers below from the published config.json.
    "gemma_2b": 2_506_172_416,
    "gemma_7b": 8_537_680_896,
    "gemma2_2b": 2_614_341_888,
    "gemma2_9b": 9_241_705_984,
    "gemma3_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    # gemma-3-4b is multimodal (4.30B with its SigLIP tower); this is its text
    # decoder alone, as transformers counts Gemma3ForCausalLM from text_config.
    "gemma3_4b": 3_880_263_168,
}

# The config.json of each Gemma checkpoint as published on the Hugging Face hub
# (google/gemma-2b, gemma-7b, gemma-2-2b, gemma-2-9b, gemma-3-270m, gemma-3-1b-pt,
# gemma-3-4b-pt; the 4B's vision_config left out), fields that do not shape the
# model (torch_dtype, transformers_version, ...) dropped. They mix transformers-4
# forms: `hidden_act: gelu` meaning the tanh GELU, no `layer_types`, a pattern
# field, a sparse multimodal `text_config`.
_GEMMA1 = dict(
    architectures=["GemmaForCausalLM"],
    model_type="gemma",
    attention_bias=False,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
    head_dim=256,
    hidden_act="gelu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-06,
    rope_scaling=None,
    rope_theta=10000.0,
    vocab_size=256000,
)
_GEMMA2 = dict(
    architectures=["Gemma2ForCausalLM"],
    model_type="gemma2",
    attention_bias=False,
    attn_logit_softcapping=50.0,
    bos_token_id=2,
    cache_implementation="hybrid",
    eos_token_id=1,
    final_logit_softcapping=30.0,
    head_dim=256,
    hidden_act="gelu_pytorch_tanh",
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    pad_token_id=0,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-06,
    rope_theta=10000.0,
    sliding_window=4096,
    vocab_size=256000,
)
_GEMMA3 = dict(
    architectures=["Gemma3ForCausalLM"],
    model_type="gemma3_text",
    attention_bias=False,
    attn_logit_softcapping=None,
    bos_token_id=2,
    eos_token_id=1,
    final_logit_softcapping=None,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=32768,
    pad_token_id=0,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-06,
    rope_local_base_freq=10000.0,
    rope_scaling=None,
    rope_theta=1000000.0,
    sliding_window=512,
    vocab_size=262144,
)


def _shape(hidden, inter, layers, heads, kv_heads):
    return dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )


PUBLISHED_CONFIGS = {
    "gemma_2b": {**_GEMMA1, **_shape(2048, 16384, 18, 8, 1)},
    "gemma_7b": {**_GEMMA1, **_shape(3072, 24576, 28, 16, 16)},
    "gemma2_2b": {**_GEMMA2, **_shape(2304, 9216, 26, 8, 4)},
    "gemma2_9b": {**_GEMMA2, **_shape(3584, 14336, 42, 16, 8)},
    "gemma3_270m": {
        **_GEMMA3,
        **_shape(640, 2048, 18, 4, 1),
        "_sliding_window_pattern": 6,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    },
    "gemma3_1b": {
        **_GEMMA3,
        **_shape(1152, 6912, 26, 4, 1),
        "sliding_window_pattern": 6,
    },
    "gemma3_4b": {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": 1,
        "image_token_index": 262144,
        "mm_tokens_per_image": 256,
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
    },
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_matches_published_size(name):
    cfg = get_preset(name).replace(scan_layers=True)  # stacked layers: fast to trace
    model = abstract_model(cfg)
    n = count_params(model)
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] <= 0.005, f"{name}: {n:,}"
    assert n == cfg.num_params()
    # Forward shapes without running it.
    ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, ids)
    assert out.shape == (2, 16, cfg.vocab_size) and out.dtype == jnp.float32


def test_scanned_and_unrolled_layouts_have_the_same_parameters():
    cfg = get_preset("qwen2p5_3b")
    unrolled = nnx.state(abstract_model(cfg))
    scanned = nnx.state(abstract_model(cfg.replace(scan_layers=True)))
    q = unrolled["layers"][0]["self_attn"]["q_proj"]["kernel"]
    q_stacked = scanned["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q_stacked.get_value().shape == (cfg.num_layers, *q.get_value().shape)
    assert q.get_metadata()["out_sharding"] == ("embed", "heads", "head_dim")
    assert q_stacked.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")
    assert count_params(abstract_model(cfg)) == count_params(
        abstract_model(cfg.replace(scan_layers=True))
    )


def test_every_parameter_carries_known_logical_axes():
    known = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers"}
    state = nnx.state(abstract_model(get_preset("qwen3_8b").replace(scan_layers=True)))
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.get_value().ndim, path
        assert set(axes) <= known, (path, axes)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model preset 'qwen9'"):
        get_preset("qwen9")


def _transformers_count(hf_config: dict) -> int:
    """transformers' own parameter count of the causal LM a config.json describes
    (the text decoder of a multimodal one), built on the meta device: no memory."""
    import torch
    import transformers

    hf = dict(hf_config)
    if hf["model_type"] == "gemma3":
        hf = hf["text_config"]
    kwargs = {k: v for k, v in hf.items() if k not in ("architectures", "model_type")}
    config = transformers.AutoConfig.for_model(hf["model_type"], **kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_gemma_presets_are_their_published_config_and_count(name):
    published = PUBLISHED_CONFIGS[name]
    assert ModelConfig.from_hf_config(published) == get_preset(name)
    assert _transformers_count(published) == PUBLISHED[name] == get_preset(name).num_params()
