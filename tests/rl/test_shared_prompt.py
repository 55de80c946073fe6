"""The GRPO forward that runs each group's prompt once: its log-probs are
`completion_log_probs`' plain forward (checked against transformers elsewhere) on
left-padded prompts, scanned and unrolled, windowed or not; the update it drives
equals the plain update, in one or two microbatches and sharded over 8 devices; and
the on-policy update, which takes its old log-probs from its own forward, equals the
one that recomputes them."""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kardia_jax.config_files import sharding_preset
from kardia_jax.errors import ConfigError
from kardia_jax.models import ModelConfig, init_model
from kardia_jax.rl import grpo, rollout
from kardia_jax.rl import step as step_module
from kardia_jax.rl.config import old_logp_source
from kardia_jax.rl.step import GRPOLoss, completion_log_probs, grpo_step, jit_log_probs
from kardia_jax.sharding import make_mesh
from kardia_jax.train.state import batch_sharding, init_train_state

from .test_grpo_config import config

BASE = ModelConfig(
    family="qwen3",
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qk_norm=True,
)
# Gemma 3's mix (two sliding layers, then a global one; a local rope base) with
# Gemma 2's soft-caps, and a window shorter than prompt + completion: it cuts prompt
# keys out of the completion queries' view.
GEMMA = dataclasses.replace(
    BASE,
    family="gemma3_text",
    hidden_act="gelu_pytorch_tanh",
    scale_embeddings=True,
    norm_plus_one=True,
    sandwich_norms=True,
    query_pre_attn_scalar=12.0,
    attn_logit_softcap=5.0,
    final_logit_softcap=3.0,
    layer_types=("sliding_attention", "sliding_attention", "full_attention"),
    sliding_window=5,
    rope_local_theta=1e4,
)
P, N, G = 10, 6, 4


def rollout_batch(prompts: int, group: int = G, seed: int = 0):
    """Whole groups in order: each prompt has its own real length (left padding);
    its `group` completions differ in tokens and lengths (one empty, one full)."""
    rng = np.random.default_rng(seed)
    rows = prompts * group
    ids = np.zeros((rows, P + N), np.int32)
    attn = np.zeros((rows, P + N), np.int32)
    for i in range(prompts):
        real = P - (3 * i) % (P - 2)
        prompt = rng.integers(1, BASE.vocab_size, real)
        rows_i = slice(i * group, (i + 1) * group)
        ids[rows_i, P - real : P] = prompt
        attn[rows_i, P - real : P] = 1
    lengths = rng.integers(1, N + 1, rows)
    lengths[0], lengths[1] = N, 0
    cmask = (np.arange(N)[None] < lengths[:, None]).astype(np.int32)
    ids[:, P:] = np.where(cmask > 0, rng.integers(1, BASE.vocab_size, (rows, N)), 0)
    attn[:, P:] = cmask
    return dict(
        input_ids=ids,
        attention_mask=attn,
        completion_mask=cmask,
        old_logp=rng.normal(-2.0, 0.3, (rows, N)).astype(np.float32) * cmask,
        ref_logp=rng.normal(-2.0, 0.3, (rows, N)).astype(np.float32) * cmask,
        advantages=rng.normal(size=rows).astype(np.float32),
    )


def peaked_model(cfg):
    """Random weights spread wider than the 0.02 init: peaked attention, so a wrong
    mask, window or position moves the log-probs far beyond the tolerance."""
    model = init_model(cfg, seed=1)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda w: w * 3.0, state))
    return model


def count_shared(monkeypatch) -> list:
    """Row shapes the shared-prompt forward was traced with: the path was taken."""
    calls, real = [], step_module.shared_prompt_hidden

    def spy(model, input_ids, *args, **kwargs):
        calls.append(input_ids.shape)
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(step_module, "shared_prompt_hidden", spy)
    return calls


def log_probs(model, batch, group):
    fn = jax.jit(
        lambda i, a: completion_log_probs(model, i, a, N, entropy=True, chunk=4, group=group)
    )
    out = fn(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("shape", ["qwen3", "gemma3"])
def test_shared_prompt_log_probs_equal_the_plain_forward(monkeypatch, scan, shape):
    cfg = (BASE if shape == "qwen3" else GEMMA).replace(scan_layers=scan, remat="full")
    model = peaked_model(cfg)
    b = rollout_batch(prompts=3)
    calls = count_shared(monkeypatch)
    plain, plain_entropy = log_probs(model, b, 0)
    shared, shared_entropy = log_probs(model, b, G)
    assert calls == [(3 * G, P + N)]
    mask = b["completion_mask"] > 0
    np.testing.assert_allclose(shared[mask], plain[mask], atol=1e-5, rtol=0)
    np.testing.assert_allclose(shared_entropy[mask], plain_entropy[mask], atol=1e-5, rtol=0)
    assert np.ptp(plain[mask]) > 1.0  # far from uniform: the match is not vacuous


def test_the_window_counts_in_the_shared_forward():
    """One slot more of window changes the Gemma log-probs: the shared forward's
    window is not an inert mask that the test above could not catch."""
    model = peaked_model(GEMMA.replace(scan_layers=True))
    wider = GEMMA.replace(scan_layers=True, sliding_window=GEMMA.sliding_window + 1)
    wide = nnx.merge(nnx.graphdef(init_model(wider)), nnx.state(model))
    b = rollout_batch(prompts=2)
    mask = b["completion_mask"] > 0
    diff = np.abs(log_probs(model, b, G)[0] - log_probs(wide, b, G)[0])[mask]
    assert diff.max() > 1e-2


def setup(mesh, rules, cfg=BASE):
    # Plain SGD at lr 1: the update is minus the gradient, so comparing updates
    # compares gradients (one Adam step divides each by its own magnitude, which
    # turns rounding in a near-zero entry into a step of full size).
    tx = optax.sgd(1.0)
    graphdef, state, shardings = init_train_state(cfg, tx, mesh, rules, seed=3)
    return graphdef, state, shardings, tx


def update(mesh, rules, loss, batch, microbatches=1):
    graphdef, state, shardings, tx = setup(mesh, rules)
    step = jax.jit(
        functools.partial(
            grpo_step, graphdef=graphdef, tx=tx, loss=loss, microbatches=microbatches
        ),
        in_shardings=(shardings, batch_sharding(mesh, rules, ndim=1)),
        out_shardings=(shardings, None),
    )
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
    return before, jax.tree.map(np.asarray, state.params), jax.device_get(metrics)


def one_device():
    return make_mesh({"data": 1}, devices=jax.devices()[:1]), sharding_preset("dp").rules


def assert_same_update(got, want, rel, whole=False):
    """The same step to `rel` of each tensor's largest entry of it (`whole`: of the
    whole update's largest entry), and the same loss metrics."""
    (before, params, metrics), (_, want_params, want_metrics) = got, want
    pairs = zip(jax.tree.leaves(before), jax.tree.leaves(want_params), strict=True)
    steps = [b - w0 for w0, b in pairs]
    assert all(np.max(np.abs(s)) > 0 for s in steps)  # every tensor moved: not two no-ops
    largest = max(np.max(np.abs(s)) for s in steps)
    for w0, a, step in zip(jax.tree.leaves(before), jax.tree.leaves(params), steps, strict=True):
        scale = largest if whole else np.max(np.abs(step))
        np.testing.assert_allclose(a - w0, step, atol=rel * scale, rtol=0)
    for k in ("loss", "pg_loss", "kl", "entropy", "ratio_mean", "clip_frac", "grad_norm"):
        assert float(metrics[k]) == pytest.approx(float(want_metrics[k]), rel=rel, abs=1e-6), k


@pytest.mark.parametrize("microbatches", [1, 2])
def test_shared_prompt_update_equals_the_plain_update(monkeypatch, microbatches):
    mesh, rules = one_device()
    b = rollout_batch(prompts=4)
    loss = GRPOLoss(beta=0.04, norm=float(N))
    plain = update(mesh, rules, loss, b)
    calls = count_shared(monkeypatch)
    shared = update(mesh, rules, dataclasses.replace(loss, group=G), b, microbatches)
    # Each microbatch holds whole groups: 4 prompts x G rows split in `microbatches`
    # (traced twice with microbatches: their metrics' shapes, then the scan's body).
    assert calls and set(calls) == {(4 * G // microbatches, P + N)}
    assert_same_update(shared, plain, 1e-5)


def test_groups_that_do_not_split_into_the_microbatches_run_the_plain_forward(monkeypatch):
    mesh, rules = one_device()
    b = rollout_batch(prompts=3)  # 3 groups: not 2 microbatches of whole groups
    loss = GRPOLoss(beta=0.04, norm=float(N))
    plain = update(mesh, rules, loss, b)
    calls = count_shared(monkeypatch)
    shared = update(mesh, rules, dataclasses.replace(loss, group=G), b, microbatches=2)
    assert calls == []
    assert_same_update(shared, plain, 1e-5)
    assert "do not split into 2 parts" in step_module.shared_prompt_fallback(3 * G, G, 2)


def test_sharded_shared_prompt_update_and_log_probs_agree(monkeypatch):
    """8 devices, batch over data x fsdp: 8 groups of 2, one per shard."""
    mesh, rules = one_device()
    b = rollout_batch(prompts=8, group=2)
    loss = GRPOLoss(beta=0.04, norm=float(N))
    plain = update(mesh, rules, loss, b)
    fsdp = make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices=jax.devices()[:8])
    fsdp_rules = sharding_preset("fsdp").rules
    calls = count_shared(monkeypatch)
    shared = update(fsdp, fsdp_rules, dataclasses.replace(loss, group=2), b)
    assert calls == [(16, P + N)]
    # Against the whole update's scale: sharding alone (the plain update on this mesh)
    # sums the gradient in another order, which moves the smallest entries of a
    # tensor by ~1e-4 of its largest (~3e-6 of the update's largest).
    assert_same_update(shared, plain, 1e-5, whole=True)

    # The reference / old-policy forward as the driver builds it, sharded.
    graphdef, state, shardings, _ = setup(fsdp, fsdp_rules)
    bsh = batch_sharding(fsdp, fsdp_rules)
    ids, attn = (jax.device_put(b[k], bsh) for k in ("input_ids", "attention_mask"))
    got = jit_log_probs(
        dataclasses.replace(loss, group=2), N, params_shardings=shardings.params, bsh=bsh
    )(graphdef, state.params, ids, attn)
    assert len(calls) == 2
    want = completion_log_probs(nnx.merge(graphdef, state.params), ids, attn, N)
    mask = b["completion_mask"] > 0
    np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(want)[mask], atol=1e-5)


# ------------------------------------------------------------------ old log-probs
def test_on_policy_update_equals_the_recomputed_one():
    """rollout.old_logp "current": stop_gradient(logp) of the update's own forward
    gives the update that recomputing the old log-probs first gives."""
    mesh, rules = one_device()
    b = rollout_batch(prompts=2)
    loss = GRPOLoss(beta=0.04, norm=float(N))
    graphdef, state, _, _ = setup(mesh, rules)
    old = jit_log_probs(loss, N)(graphdef, state.params, b["input_ids"], b["attention_mask"])
    recompute = dict(b, old_logp=np.asarray(old) * b["completion_mask"])
    want = update(mesh, rules, loss, recompute)
    # The batch's old_logp is ignored: garbage there changes nothing.
    got = update(mesh, rules, dataclasses.replace(loss, on_policy=True), b)
    assert_same_update(got, want, 1e-6)
    assert float(got[2]["ratio_min"]) == float(got[2]["ratio_max"]) == 1.0
    assert abs(float(want[2]["ratio_min"]) - 1.0) < 1e-6


@pytest.mark.parametrize(
    "mode, mu, minibatches, source",
    [
        ("auto", 1, 1, "current"),
        ("auto", 2, 1, "recompute"),
        ("auto", 1, 2, "recompute"),
        ("recompute", 1, 1, "recompute"),
        ("sampler", 1, 1, "sampler"),
        ("current", 1, 1, "current"),
    ],
)
def test_old_logp_auto_is_current_only_on_policy(mode, mu, minibatches, source):
    c = config(**{"rollout.old_logp": mode, "grpo.mu": mu, "grpo.minibatches": minibatches})
    assert old_logp_source(c) == source
    assert GRPOLoss.from_config(c).on_policy == (source == "current")


def test_current_old_logp_off_policy_is_refused():
    c = config(**{"rollout.old_logp": "current", "grpo.mu": 2})
    with pytest.raises(ConfigError, match="rollout.old_logp='current' needs an on-policy"):
        grpo._check_settings(c)


@pytest.mark.parametrize("mu, passes", [(1, 0), (2, 1)])
def test_the_driver_skips_the_old_policy_pass_only_on_policy(mu, passes):
    """`prepare_update` on two groups of two: "auto" runs the old policy's forward
    only when the update is not on-policy, and logs no time for it when it does not."""
    mesh, rules = one_device()
    c = config(**{"rollout.group_size": 2, "rollout.global_batch": 4, "grpo.mu": mu})
    calls = []

    def logp_fn(graphdef, params, ids, attn):
        calls.append(graphdef)
        return np.full(ids.shape[:1] + (3,), -1.0, np.float32)

    ro = rollout.Rollouts(
        example_index=np.array([0, 0, 1, 1]),
        prompt_ids=[[5, 6], [5, 6], [7], [7]],
        tokens=np.ones((4, 3), np.int32),
        mask=np.ones((4, 3), bool),
        sampler_logp=np.full((4, 3), -2.0, np.float32),
        texts=["a"] * 4,
        finish_reason=["stop"] * 4,
        rewards={"total": np.array([0.0, 1.0, 1.0, 0.5], np.float32)},
    )
    run = types.SimpleNamespace(
        config=c,
        buckets=(8,),
        pad_id=0,
        bsh=batch_sharding(mesh, rules),
        logp_fn=logp_fn,
        ref=("ref", None),
        graphdef="policy",
        state=types.SimpleNamespace(params=None),
    )
    _, host, old, ref, times = grpo.prepare_update(run, ro)
    assert calls == ["ref"] + ["policy"] * passes
    np.testing.assert_array_equal(ref, -1.0)
    np.testing.assert_array_equal(old, -1.0 if passes else 0.0)
    if not passes:
        assert times["old_logp"] == 0.0
