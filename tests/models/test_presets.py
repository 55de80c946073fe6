"""Full-size presets, checked for shapes only (`jax.eval_shape`: no memory, no FLOPs)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from kardia_jax.errors import ConfigError
from kardia_jax.models import PRESETS, abstract_model, count_params, get_preset

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
