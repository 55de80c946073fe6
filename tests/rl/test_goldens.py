"""kardia_jax.rl's GRPO math against TRL's GRPOTrainer and verl's core_algos, on the stored
goldens that tests/rl/goldens/make_goldens.py wrote by running the libraries themselves."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.rl import aggregate, group_advantages, kl_penalty, policy_loss

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
# float32 throughout, sums of ~100 terms of order 1: a few ulps of the loss's scale.
TOL = dict(rtol=2e-5, atol=2e-6)


@functools.cache
def load(name):
    with open(os.path.join(GOLDENS, name)) as f:
        golden = json.load(f)
    inputs = {
        k: np.asarray(v, np.float32) if isinstance(v, list) else v
        for k, v in golden["inputs"].items()
    }
    return golden, inputs


def case_id(case):
    parts = [case.get("loss_type") or case["agg"], f"clip{case['clip_low']}-{case['clip_high']}"]
    for key in ("beta", "dual_clip", "per_token_advantages"):
        if case.get(key) not in (None, False):
            parts.append(f"{key}={case[key]}")
    if case.get("verl_global_batch_info"):
        parts.append("global-batch-info")
    if np.asarray(case["advantages"]).ndim == 2:
        parts.append("adv[B,T]")
    return "/".join(parts)


def test_goldens_record_library_versions():
    trl, _ = load("trl.json")
    verl, _ = load("verl.json")
    assert trl["versions"]["trl"] == "1.16.0"
    assert verl["versions"]["verl"] == "0.9.1"
    assert trl["notes"]["loss_types"]["grpo"]["agg"] == "seq-mean-token-mean"
    assert trl["notes"]["loss_types"]["dr_grpo"]["agg"] == "seq-mean-token-sum-norm"


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(scale):
    golden, inp = load("trl.json")
    ref = golden["advantages"][scale]
    ours = group_advantages(
        inp["rewards"], inp["group_size"], scale=scale, eps=ref["eps"], ddof=ref["ddof"]
    )
    np.testing.assert_allclose(ours, ref["values"], **TOL)


@pytest.mark.parametrize(
    "key",
    [
        "compute_grpo_outcome_advantage/group",
        "compute_grpo_outcome_advantage/none",
        "compute_grpo_vectorized_outcome_advantage/group",
        "compute_grpo_vectorized_outcome_advantage/none",
    ],
)
def test_advantages_match_verl(key):
    golden, inp = load("verl.json")
    ref = golden["advantages"][key]
    ours = group_advantages(
        inp["rewards"], inp["group_size"], scale=ref["scale"], eps=ref["eps"], ddof=ref["ddof"]
    )
    np.testing.assert_allclose(ours, ref["values"], **TOL)


def _trl_total_loss(logp, inp, case):
    """TRL adds beta * k3 (unclamped) per token before aggregating; so do we, by linearity."""
    kw = case["agg_kwargs"]
    loss, metrics = policy_loss(
        logp,
        inp["old_logp"],
        jnp.asarray(case["advantages"], jnp.float32),
        inp["mask"],
        clip_low=case["clip_low"],
        clip_high=case["clip_high"],
        agg=case["agg"],
        **kw,
    )
    kl = kl_penalty(logp, inp["ref_logp"], inp["mask"], "k3", k3_bound=None)
    metrics["kl_token_mean"] = aggregate(kl, inp["mask"], "token-mean")
    return loss + case["beta"] * aggregate(kl, inp["mask"], case["agg"], **kw), metrics


@pytest.mark.parametrize("case", load("trl.json")[0]["policy_loss"], ids=case_id)
def test_policy_loss_matches_trl(case):
    _, inp = load("trl.json")
    (loss, metrics), grad = jax.value_and_grad(_trl_total_loss, has_aux=True)(
        jnp.asarray(inp["logp"]), inp, case
    )
    np.testing.assert_allclose(loss, case["loss"], **TOL)
    np.testing.assert_allclose(grad, case["grad_logp"], **TOL)
    for name, value in case["metrics"].items():
        np.testing.assert_allclose(metrics[name], value, **TOL, err_msg=name)


@pytest.mark.parametrize("case", load("verl.json")[0]["policy_loss"], ids=case_id)
def test_policy_loss_matches_verl(case):
    _, inp = load("verl.json")

    def loss_fn(logp):
        return policy_loss(
            logp,
            inp["old_logp"],
            jnp.asarray(case["advantages"], jnp.float32),
            inp["mask"],
            clip_low=case["clip_low"],
            clip_high=case["clip_high"],
            agg=case["agg"],
            dual_clip=case["dual_clip"],
            **case["agg_kwargs"],
        )

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(inp["logp"]))
    np.testing.assert_allclose(loss, case["loss"], **TOL)
    np.testing.assert_allclose(grad, case["grad_logp"], **TOL)
    for name, value in case["metrics"].items():
        np.testing.assert_allclose(metrics[name], value, **TOL, err_msg=name)


@pytest.mark.parametrize("case", load("verl.json")[0]["kl"], ids=lambda c: c["verl_name"])
def test_kl_matches_verl(case):
    golden, inp = load("verl.json")
    aggs = golden["notes"]["agg_list"]
    mask = inp["mask"]

    def per_token(logp):
        return kl_penalty(logp, inp["ref_logp"], mask, case["estimator"])  # k3 bound 10 = verl's

    logp = jnp.asarray(inp["logp"])
    np.testing.assert_allclose(per_token(logp), case["per_token_masked"], **TOL)
    ours = [aggregate(per_token(logp), mask, agg) for agg in aggs]
    np.testing.assert_allclose(ours, case["agg"], **TOL)
    grad = jax.grad(lambda lp: aggregate(per_token(lp), mask, "token-mean"))(logp)
    np.testing.assert_allclose(grad, case["grad_logp_token_mean"], **TOL)


def test_k3_bound_is_where_trl_and_verl_part():
    """The inputs plant tokens with k3 > 10: verl's clamp changes the mean, TRL's has none."""
    trl, inp = load("trl.json")
    verl, _ = load("verl.json")
    trl_kl = next(c for c in trl["policy_loss"] if c["beta"])["metrics"]["kl_token_mean"]
    verl_kl = next(c for c in verl["kl"] if c["estimator"] == "k3")["agg"][0]
    assert trl_kl > verl_kl + 0.1
    for bound, expected in ((None, trl_kl), (10.0, verl_kl)):
        kl = kl_penalty(inp["logp"], inp["ref_logp"], inp["mask"], "k3", k3_bound=bound)
        np.testing.assert_allclose(aggregate(kl, inp["mask"]), expected, **TOL)
