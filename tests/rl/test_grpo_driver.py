"""The GRPO driver end to end on CPU: a tiny SFT policy, rollouts, rewards, updates;
dynamic sampling keeps shapes fixed; a killed run resumes with the same rollouts."""

import json
import os
import signal
import time

import numpy as np
import pytest

from kardia_jax.rl.rollout import (
    Rollouts,
    informative_groups,
    loss_rows,
    select_groups,
    update_batch,
)

from ..train.conftest import run_cli, tiny_overrides
from ..train.test_sft import TINY

GRPO = os.path.join(os.path.dirname(TINY), "grpo_tiny.py")


def fake_rollouts(totals, group_size=2, n=3, offset=0):
    r = len(totals)
    return Rollouts(
        example_index=np.arange(offset, offset + r) // group_size,
        prompt_ids=[[1, 2, 3][: 1 + i % 3] for i in range(r)],
        tokens=np.full((r, n), 7, np.int32),
        mask=np.ones((r, n), bool),
        sampler_logp=np.full((r, n), -1.0, np.float32),
        texts=[f"t{offset + i}" for i in range(r)],
        finish_reason=["eos"] * r,
        rewards={"total": np.asarray(totals, np.float32)},
    )


def test_dynamic_sampling_refills_zero_variance_groups_at_fixed_shape():
    first = fake_rollouts([1, 1, 0, 1, 0.5, 0.5])  # groups: constant, informative, constant
    refill = fake_rollouts([0, 0, 1, 0, 2, 2], offset=6)  # constant, informative, constant
    assert informative_groups(first.rewards["total"], 2).tolist() == [False, True, False]
    picked = select_groups([first, refill], group_size=2, want=3, dynamic=True)
    # Both informative groups first, then one zero-variance group to keep 3 groups.
    assert picked.texts == ["t2", "t3", "t8", "t9", "t0", "t1"]
    plain = select_groups([first], group_size=2, want=3, dynamic=False)
    assert plain.texts == first.texts
    a = update_batch(picked, np.zeros(6), prompt_len=4, pad_id=0)
    b = update_batch(plain, np.zeros(6), prompt_len=4, pad_id=0)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert a["input_ids"].shape == (6, 7)
    np.testing.assert_array_equal(a["attention_mask"][1], [0, 0, 0, 1, 1, 1, 1])  # 1-token prompt


def test_truncated_and_zero_variance_rows_can_be_masked_from_the_loss():
    ro = fake_rollouts([0, 1, 1, 1, 0, 1])  # groups: informative, constant, informative
    ro.finish_reason = ["eos", "length", "stop", "stop", "length", "eos"]
    assert loss_rows(ro, 2).tolist() == [True] * 6
    assert loss_rows(ro, 2, truncated=True).tolist() == [1, 0, 1, 1, 0, 1]
    assert loss_rows(ro, 2, zero_variance=True).tolist() == [1, 1, 0, 0, 1, 1]
    both = loss_rows(ro, 2, truncated=True, zero_variance=True)
    assert both.tolist() == [1, 0, 0, 0, 0, 1]
    keep = update_batch(ro, np.arange(6.0), prompt_len=4, pad_id=0)
    drop = update_batch(ro, np.arange(6.0), prompt_len=4, pad_id=0, keep_rows=both)
    np.testing.assert_array_equal(drop["completion_mask"].sum(1), [3, 0, 0, 0, 0, 3])
    np.testing.assert_array_equal(drop["sampler_logp"][1:5], 0.0)
    np.testing.assert_array_equal(drop["sampler_logp"][[0, 5]], keep["sampler_logp"][[0, 5]])
    # Only the loss mask changes: the rows keep their tokens, attention and advantage.
    for k in ("input_ids", "attention_mask", "advantages"):
        np.testing.assert_array_equal(drop[k], keep[k])


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("sft")
    proc = run_cli(
        [
            "sft",
            "--config",
            TINY,
            "--workdir",
            str(workdir),
            *tiny_overrides(small_tokenizer, **{"train.steps": 2, "export_hf": True}),
        ]
    )
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return str(workdir / "hf")


ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def grpo_args(workdir, policy, tokenizer, steps):
    return [
        "grpo",
        "--config",
        GRPO,
        "--workdir",
        str(workdir),
        f"--config.model.path={policy}",
        f"--config.data.tokenizer={tokenizer}",
        "--config.model.vocab_multiple=8",
        f"--config.train.steps={steps}",
        "--config.checkpoint.every=1",
        "--config.rollout.max_new_tokens=16",
    ]


def ledger(workdir):
    with open(os.path.join(workdir, "rollouts.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_grpo_runs_and_resumes_after_sigkill_with_the_same_rollouts(
    tmp_path, sft_policy, small_tokenizer
):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    proc = run_cli(grpo_args(straight, sft_policy, small_tokenizer, 3), ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    log = [json.loads(x) for x in (straight / "grpo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in log)
    assert all(0.0 <= r["reward/total"] <= 1.0 for r in log)
    assert len(ledger(straight)) == 3 * 4 * 4  # steps x prompts x group

    proc = run_cli(grpo_args(broken, sft_policy, small_tokenizer, 3), ONE_DEVICE)
    while not os.path.isdir(broken / "checkpoints" / "1"):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    proc = run_cli(grpo_args(broken, sft_policy, small_tokenizer, 3), ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "resumed from step" in out, out
    assert ledger(broken) == ledger(straight)
