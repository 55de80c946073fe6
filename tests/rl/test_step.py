"""The jitted GRPO update on a tiny model: the completion-slice log-probs equal the
full forward's, microbatching and sharding change nothing, ratio 1 at mu = 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from kardia_jax.config_files import sharding_preset
from kardia_jax.models import ModelConfig
from kardia_jax.models.logprobs import sequence_log_probs
from kardia_jax.rl.step import GRPOLoss, completion_log_probs, grpo_step
from kardia_jax.sharding import make_mesh
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.state import batch_sharding, init_train_state

CFG = ModelConfig(
    family="qwen3",
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qk_norm=True,
)
P, N, R = 6, 5, 8  # prompt columns, completion columns, rows (2 prompts x group 4)


def rollout_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, (R, P + N)).astype(np.int32)
    attn = np.ones((R, P + N), np.int32)
    for r in range(R):  # left-padded prompts, completions of different lengths
        attn[r, : r % 3] = 0
        ids[r, : r % 3] = 0
    lengths = np.array([5, 3, 1, 4, 5, 2, 0, 5])
    cmask = (np.arange(N)[None] < lengths[:, None]).astype(np.int32)
    attn[:, P:] = cmask
    return dict(
        input_ids=ids,
        attention_mask=attn,
        completion_mask=cmask,
        old_logp=rng.normal(-2.0, 0.3, (R, N)).astype(np.float32) * cmask,
        ref_logp=rng.normal(-2.0, 0.3, (R, N)).astype(np.float32) * cmask,
        advantages=rng.normal(size=R).astype(np.float32),
    )


def setup(mesh, rules):
    tx = make_optimizer(
        ConfigDict(
            dict(
                lr=1e-3,
                warmup_steps=0,
                min_lr_ratio=1.0,
                b1=0.9,
                b2=0.99,
                eps=1e-6,
                weight_decay=0.0,
                clip_norm=1.0,
            )
        ),
        10,
    )
    graphdef, state, shardings = init_train_state(CFG, tx, mesh, rules, seed=3)
    return graphdef, state, shardings, tx


def run(mesh, rules, loss, microbatches=1):
    graphdef, state, shardings, tx = setup(mesh, rules)
    step = jax.jit(
        functools.partial(
            grpo_step, graphdef=graphdef, tx=tx, loss=loss, microbatches=microbatches
        ),
        in_shardings=(shardings, batch_sharding(mesh, rules, ndim=1)),
        out_shardings=(shardings, None),
    )
    state, metrics = step(state, rollout_batch())
    return jax.tree.map(np.asarray, state.params), jax.device_get(metrics)


def one_device():
    return make_mesh({"data": 1}, devices=jax.devices()[:1]), sharding_preset("dp").rules


def test_completion_slice_log_probs_equal_the_full_forward():
    mesh, rules = one_device()
    graphdef, state, _, _ = setup(mesh, rules)
    model = nnx.merge(graphdef, state.params)
    b = rollout_batch()
    sliced = completion_log_probs(
        model, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]), N
    )
    full = sequence_log_probs(model, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))
    np.testing.assert_allclose(np.asarray(sliced), np.asarray(full)[:, P - 1 :], atol=1e-6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_microbatches_and_fsdp_match_the_single_pass_update(agg):
    loss = GRPOLoss(beta=0.04, agg=agg, norm=float(N))
    mesh, rules = one_device()
    ref_params, ref = run(mesh, rules, loss)
    p = sharding_preset("fsdp")
    fsdp = make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, devices=jax.devices()[:4])
    runs = [run(mesh, rules, loss, microbatches=4)]
    if agg == "token-mean":  # sharding does not depend on the aggregation: check it once
        runs.append(run(fsdp, p.rules, loss, microbatches=2))
    for params, m in runs:
        for k in ("loss", "pg_loss", "kl", "clip_frac", "ratio_mean", "entropy"):
            assert abs(float(m[k]) - float(ref[k])) <= 1e-5, (k, m[k], ref[k])
        assert float(m["ratio_min"]) == pytest.approx(float(ref["ratio_min"]), abs=1e-6)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_on_policy_ratio_is_one_and_nothing_is_clipped():
    mesh, rules = one_device()
    graphdef, state, _, tx = setup(mesh, rules)
    b = rollout_batch()
    model = nnx.merge(graphdef, state.params)
    logp = completion_log_probs(
        model, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]), N
    )
    b = dict(b, old_logp=np.asarray(logp) * b["completion_mask"])
    step = jax.jit(functools.partial(grpo_step, graphdef=graphdef, tx=tx, loss=GRPOLoss(beta=0.0)))
    _, m = step(state, b)
    assert abs(float(m["ratio_mean"]) - 1.0) < 1e-6 and float(m["clip_frac"]) == 0.0
    assert "kl" not in m  # beta = 0: no reference term at all
