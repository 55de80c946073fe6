"""Bad checkpoints give one clear error naming the field, tensor or file; nothing
loads partially."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from kardia_jax.errors import CheckpointError, ConfigError
from kardia_jax.models import load_hf_model
from kardia_jax.models.config import ModelConfig


def tampered(src, dst, tensors=None, config=None):
    """Copy of checkpoint `src` at `dst` with its tensors / config.json edited."""
    shutil.copytree(src, dst)
    if tensors is not None:
        weights = load_file(f"{src}/model.safetensors")
        save_file(tensors(dict(weights)), f"{dst}/model.safetensors", metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def drop(name):
    def f(w):
        del w[name]
        return w

    return f


def reshape(name):
    def f(w):
        w[name] = np.zeros((w[name].shape[0] + 1, *w[name].shape[1:]), w[name].dtype)
        return w

    return f


def add(name):
    def f(w):
        w[name] = np.zeros((4,), np.float32)
        return w

    return f


def setting(**kv):
    return lambda cfg: cfg.update(kv)


CASES = [
    # (id, variant, tensors edit, config edit, error type, expected message pieces)
    (
        "unknown model_type",
        "qwen2_untied",
        None,
        setting(model_type="gpt2"),
        ConfigError,
        ["config.json", "model_type='gpt2'", "not supported"],
    ),
    (
        "missing tensor",
        "qwen2_untied",
        drop("model.layers.1.self_attn.k_proj.bias"),
        None,
        CheckpointError,
        ["missing tensor", "model.layers.1.self_attn.k_proj.bias"],
    ),
    (
        "missing lm_head when untied",
        "qwen2_untied",
        drop("lm_head.weight"),
        None,
        CheckpointError,
        ["missing tensor", "lm_head.weight"],
    ),
    (
        "wrong shape",
        "qwen3",
        reshape("model.layers.0.mlp.up_proj.weight"),
        None,
        CheckpointError,
        ["model.safetensors", "model.layers.0.mlp.up_proj.weight", "[129, 64]", "[128, 64]"],
    ),
    (
        "wrong shape from config",
        "llama_tied",
        None,
        setting(intermediate_size=96),
        CheckpointError,
        [
            "model.layers.0.mlp.down_proj.weight",
            "has shape [64, 128]",
            "config.json implies [64, 96]",
        ],
    ),
    (
        "unexpected tensor",
        "llama_tied",
        add("model.layers.7.mlp.up_proj.weight"),
        None,
        CheckpointError,
        ["not in the model", "model.layers.7.mlp.up_proj.weight"],
    ),
    (
        "unsupported rope (transformers 5 form)",
        "qwen2_untied",
        None,
        setting(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
        ConfigError,
        ["rope_parameters.rope_type='yarn'", "not implemented"],
    ),
    (
        "unsupported rope (transformers 4 form)",
        "qwen2_untied",
        None,
        lambda c: (
            c.pop("rope_parameters"),
            c.update(rope_theta=1e4, rope_scaling={"type": "dynamic", "factor": 2.0}),
        ),
        ConfigError,
        ["rope_scaling.rope_type='dynamic'", "not implemented"],
    ),
    (
        "missing config field",
        "qwen3",
        None,
        lambda c: c.pop("num_hidden_layers"),
        ConfigError,
        ["config.json", "missing required field 'num_hidden_layers'"],
    ),
    (
        "sliding window",
        "qwen2_untied",
        None,
        setting(use_sliding_window=True),
        ConfigError,
        ["use_sliding_window"],
    ),
    (
        "heads not divisible",
        "qwen2_untied",
        None,
        setting(num_key_value_heads=3),
        ConfigError,
        ["num_attention_heads=4", "num_key_value_heads=3"],
    ),
]


@pytest.mark.parametrize(
    "variant,tensors,config,error,pieces", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_checkpoint_is_refused_with_a_message_naming_the_culprit(
    hf_checkpoint, tmp_path, variant, tensors, config, error, pieces
):
    src, _ = hf_checkpoint(variant)
    bad = tampered(src, tmp_path / "bad", tensors, config)
    with pytest.raises(error) as e:
        load_hf_model(bad)
    for piece in pieces:
        assert piece in str(e.value), f"{piece!r} not in {str(e.value)!r}"


def test_truncated_weights_file_is_reported_not_half_loaded(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("qwen2_tied")
    bad = tampered(src, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_hf_model(bad)


def test_pickled_weights_are_never_loaded(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("qwen2_tied")
    bad = tampered(src, tmp_path / "bad")
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        load_hf_model(bad)


def test_index_naming_a_missing_shard_file_is_reported(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("qwen2_tied")
    bad = tampered(src, tmp_path / "bad")
    names = load_file(f"{src}/model.safetensors")
    index = {"metadata": {}, "weight_map": {n: "model-00002-of-00002.safetensors" for n in names}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_hf_model(bad)


def test_both_config_forms_give_the_same_model_config():
    base = dict(
        model_type="llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    v4 = ModelConfig.from_hf_config({**base, "rope_theta": 5e5, "rope_scaling": scaling})
    v5 = ModelConfig.from_hf_config({**base, "rope_parameters": {**scaling, "rope_theta": 5e5}})
    assert v4 == v5
    assert (v4.rope_type, v4.rope_theta, v4.rope_factor) == ("llama3", 5e5, 8.0)
    assert ModelConfig.from_hf_config(base).rope_theta == 10_000.0  # transformers' default
