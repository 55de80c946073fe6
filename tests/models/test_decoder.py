"""Behaviour of the decoder itself: causality, padding and packing independence,
dtype policy, and that scan / remat change the schedule but not the maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kardia_jax.models import ModelConfig, init_model

TINY = ModelConfig(
    family="qwen3",
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qk_norm=True,
    rope_theta=1e4,
)


@pytest.mark.parametrize("scan", [False, True])
def test_changing_token_t_never_changes_logits_before_t(scan):
    model = init_model(TINY.replace(scan_layers=scan), seed=1)
    fwd = nnx.jit(lambda m, x: m(x))
    ids = jax.random.randint(jax.random.key(0), (1, 16), 0, TINY.vocab_size)
    base = np.asarray(fwd(model, ids))
    for t in (0, 5, 15):
        changed = ids.at[0, t].set((ids[0, t] + 1) % TINY.vocab_size)
        out = np.asarray(fwd(model, changed))
        np.testing.assert_array_equal(out[0, :t], base[0, :t])
        assert np.abs(out[0, t:] - base[0, t:]).max() > 1e-4  # and it does change t onwards


def test_packed_segments_equal_each_sequence_alone():
    model = init_model(TINY, seed=2)
    a = jax.random.randint(jax.random.key(1), (1, 5), 0, 128)
    b = jax.random.randint(jax.random.key(2), (1, 7), 0, 128)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    out = model(packed, segment_ids=seg)
    np.testing.assert_allclose(out[:, :5], model(a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], model(b), atol=1e-5)


def test_left_padding_changes_nothing_for_real_tokens():
    model = init_model(TINY, seed=3)
    row = jax.random.randint(jax.random.key(3), (1, 6), 0, 128)
    padded = jnp.concatenate([jnp.zeros((1, 4), row.dtype), row], axis=1)
    mask = jnp.asarray([[0] * 4 + [1] * 6])
    out = model(padded, mask)
    assert np.isfinite(np.asarray(out)).all()  # fully masked pad rows stay finite
    np.testing.assert_allclose(out[:, 4:], model(row), atol=1e-5)


def test_dtype_policy_bf16_compute_keeps_f32_params_and_logits():
    cfg = TINY.replace(dtype="bfloat16")
    model = init_model(cfg, seed=4)
    ids = jnp.arange(8)[None]
    out = model(ids)
    assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    assert out.dtype == jnp.float32
    # bf16 matmuls stay close to the f32 model with the same weights.
    ref = nnx.merge(nnx.graphdef(init_model(TINY)), nnx.state(model))(ids)
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 5e-2
    low = init_model(cfg.replace(param_dtype="bfloat16"), seed=4)
    assert low.embed_tokens.embedding[...].dtype == jnp.bfloat16
    assert low(ids).dtype == jnp.float32


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_and_scan_give_the_same_loss_and_gradients(remat):
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, 128)

    def loss_and_grad(cfg):
        model = init_model(cfg, seed=5)
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(ids)
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        return value, grads

    v0, g0 = loss_and_grad(TINY.replace(scan_layers=True))
    v1, g1 = loss_and_grad(TINY.replace(scan_layers=True, remat=remat))
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
