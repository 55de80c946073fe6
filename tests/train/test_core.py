"""The training core on synthetic batches: sharding presets agree with one device,
accumulation and target gathering change the schedule but not the maths, and a
non-finite update is skipped."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from kardia_jax.config_files import sharding_preset
from kardia_jax.models import ModelConfig, get_preset
from kardia_jax.sharding import make_mesh
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.state import (
    abstract_train_state,
    batch_sharding,
    init_train_state,
    param_bytes_per_device,
    state_shardings,
)
from kardia_jax.train.step import target_bucket, train_step, with_target_index

CFG = ModelConfig(
    family="qwen2",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qkv_bias=True,
)


def optimizer(eps=1e-6):
    # eps: Adam's first step is ~lr * g / |g|, so with eps=1e-8 gradients of ~1e-8
    # turn float rounding (which differs between shardings) into +-lr parameter
    # changes. 1e-6 keeps the comparison about sharding, not that amplification.
    return make_optimizer(
        ConfigDict(
            dict(
                lr=1e-3,
                warmup_steps=0,
                min_lr_ratio=0.1,
                b1=0.9,
                b2=0.95,
                eps=eps,
                weight_decay=0.01,
                clip_norm=1.0,
            )
        ),
        total_steps=10,
    )


def synthetic_batch(seed=0, b=8, t=16):
    rng = np.random.default_rng(seed)
    return dict(
        input_ids=rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32),
        attention_mask=np.ones((b, t), np.int32),
        loss_mask=(rng.random((b, t)) > 0.4).astype(np.int32),
    )


def run(mesh, rules, batches, microbatches=1, cfg=CFG, max_nonfinite=3, tx=None):
    tx = tx or optimizer()
    graphdef, state, shardings = init_train_state(cfg, tx, mesh, rules, seed=0)
    step = jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            tx=tx,
            microbatches=microbatches,
            max_nonfinite=max_nonfinite,
        ),
        in_shardings=(shardings, batch_sharding(mesh, rules)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    metrics = []
    for b in batches:
        state, m = step(state, b)
        metrics.append(jax.device_get(m))
    return state, metrics


def single_device():
    return make_mesh({"data": 1}, devices=jax.devices()[:1]), sharding_preset("dp").rules


@pytest.fixture(scope="module")
def reference():
    mesh, rules = single_device()
    return run(mesh, rules, [synthetic_batch(0), synthetic_batch(1)])


@pytest.mark.parametrize(
    "preset,axes",
    [("dp", {"data": 8}), ("fsdp", {"fsdp": 8}), ("fsdp_tp", {"fsdp": 4, "tensor": 2})],
)
def test_sharding_presets_match_one_device_after_two_steps(reference, preset, axes):
    p = sharding_preset(preset)
    mesh = make_mesh({**dict(p.mesh), **{k: 1 for k in p.mesh}, **axes})
    state, metrics = run(mesh, p.rules, [synthetic_batch(0), synthetic_batch(1)])
    ref_state, ref_metrics = reference
    for m, r in zip(metrics, ref_metrics, strict=True):
        assert abs(m["loss"] - r["loss"]) <= 1e-5
    q = state.params["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    assert q.sharding.mesh.shape == dict(mesh.shape)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_accumulation_and_target_gathering_match_the_plain_step(reference):
    p = sharding_preset("fsdp")
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, devices=jax.devices()[:4])
    batches = [synthetic_batch(0), synthetic_batch(1)]
    gathered = [with_target_index(b, target_bucket(b, multiple=4)) for b in batches]
    assert gathered[0]["target_index"].shape[1] < 16  # really fewer positions than T
    for mb, bs in ((2, batches), (4, gathered)):
        state, metrics = run(mesh, p.rules, bs, microbatches=mb)
        for m, r in zip(metrics, reference[1], strict=True):
            assert abs(m["loss"] - r["loss"]) <= 1e-5 and m["tokens"] == r["tokens"]
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(reference[0].params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_non_finite_update_is_skipped_and_k_in_a_row_halt():
    mesh, rules = single_device()
    good = synthetic_batch(0)
    # An id past the vocabulary makes the embedding gather return NaN: a NaN loss.
    poison = dict(good, input_ids=good["input_ids"].copy())
    poison["input_ids"][0, 3] = CFG.vocab_size + 7
    tx = optimizer()
    graphdef, state, shardings = init_train_state(CFG, tx, mesh, rules, seed=0)
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, microbatches=1, max_nonfinite=2)
    )
    before = jax.tree.map(np.asarray, state)
    state, m = step(state, poison)
    assert not np.isfinite(m["loss"]) and int(m["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(state.nonfinite_streak) == 1 and int(state.step) == 1
    state, m = step(state, good)  # a good batch applies and resets the streak
    assert int(m["skipped"]) == 0 and int(state.nonfinite_streak) == 0
    state, _ = step(state, poison)
    state, _ = step(state, poison)
    assert int(state.nonfinite_streak) == 2 and int(state.nonfinite_total) == 3
    halted = jax.tree.map(np.asarray, state.params)
    state, m = step(state, good)  # halted: even a good batch changes nothing
    assert int(m["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(halted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_qwen2p5_7b_fsdp_state_fits_16_gib_per_device_on_64_devices():
    cfg = get_preset("qwen2p5_7b").replace(scan_layers=True)
    tx = make_optimizer(
        ConfigDict(
            dict(
                lr=1e-4,
                warmup_steps=10,
                min_lr_ratio=0.1,
                b1=0.9,
                b2=0.95,
                eps=1e-8,
                weight_decay=0.0,
                clip_norm=1.0,
            )
        ),
        100,
    )
    _, abstract = abstract_train_state(cfg, tx)
    mesh = jax.sharding.AbstractMesh((1, 64, 1), ("data", "fsdp", "tensor"))
    shardings = state_shardings(abstract, tx, mesh, sharding_preset("fsdp").rules)
    per_device = param_bytes_per_device(abstract, shardings)
    total = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
    print(
        f"\nQwen2.5-7B fsdp(64): {per_device / 2**30:.2f} GiB params+optimizer per device "
        f"({total / 2**30:.1f} GiB in all)"
    )
    assert per_device < 16 * 2**30
    assert per_device <= total / 64 * 1.01  # really sharded, not replicated
