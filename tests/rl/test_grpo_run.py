"""The GRPO driver's run-time behaviour on the tiny policy: dynamic sampling refills
planted zero-variance groups without changing a shape or compiling again (and beta =
0 loads no reference), and a judge model in the loop is its own timed phase with
its scores logged."""

import json

import numpy as np

from ..rewards.helpers import TEST_RUBRIC, TEST_RUBRIC_TEXT, marker_model
from ..train.conftest import run_cli
from .conftest import DIALOGUES, as_groups, driver_args, read_jsonl
from .toy_rewards import CONSTANT

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def run(args) -> tuple[list[dict], dict]:
    proc = run_cli(args, ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1]), out


def test_dynamic_sampling_refills_planted_groups_without_recompiling(
    tmp_path, rl_policy, rl_tokenizer, short_data
):
    steps, group = 3, 4
    result, _ = run(
        driver_args(
            tmp_path,
            rl_policy,
            rl_tokenizer,
            short_data,
            steps,
            **{
                "reward.fn": "tests.rl.toy_rewards:planted",
                "rollout.dynamic_sampling": True,  # ours, off by default
                "rollout.group_size": group,
                "rollout.max_refill_rounds": 3,
                "grpo.beta": 0.0,
                "grpo.mu": 2,  # two passes of two minibatches: the same programs
                "grpo.minibatches": 2,
            },
        )
    )
    assert result["reference_model"] is False  # beta = 0: no reference loaded
    log = read_jsonl(tmp_path / "grpo_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    # Half the prompts are planted constant: some step drew a refill batch for them ...
    assert any(r["prompt_batches"] > 1 and r["zero_variance_fraction"] > 0 for r in log)
    # ... and every update batch is full (4 prompts x 4) and free of constant groups.
    assert all(r["batch/rows"] == 16 and r["batch/zero_variance_fraction"] == 0 for r in log)
    assert all("kl" not in r for r in log)
    # mu = 2 x 2 minibatches: after the first update the policy has moved (ratio != 1).
    assert all(r["updates"] == 4 and r["ratio_min"] < 1.0 < r["ratio_max"] for r in log)
    assert CONSTANT.issubset(e for e, _, _ in DIALOGUES)  # planted among the prompts
    rows = read_jsonl(tmp_path / "rollouts.jsonl")
    assert len(rows) == steps * 16
    for step in range(1, steps + 1):
        mine = [r for r in rows if r["step"] == step]
        examples = as_groups([r["example"] for r in mine], group)
        rewards = as_groups([r["reward/total"] for r in mine], group)
        assert np.all(examples == examples[:, :1])  # whole groups, in order
        assert np.all(rewards.max(1) > rewards.min(1))  # none of zero variance
    # The refills and the changing mix of prompts reuse the first step's programs.
    assert log[0]["compiles"] > 0  # the counter sees the first step's compiles
    assert [r["compiles"] for r in log[1:]] == [0, 0]


def test_judge_in_the_loop_is_a_timed_phase_with_its_scores_logged(
    tmp_path, rl_policy, rl_tokenizer, short_data
):
    judge = str(tmp_path / "judge")
    marker_model(judge)  # a tiny judge with its own (character) tokenizer
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(TEST_RUBRIC_TEXT)
    weights = {"reward.format": 0.25, "reward.emotion": 0.25, "reward.rubric": 0.5}
    run(
        driver_args(
            tmp_path / "run",
            rl_policy,
            rl_tokenizer,
            short_data,
            2,
            **weights,
            **{
                "reward.judge_path": judge,
                "reward.judge.rubric": str(rubric),
                "reward.judge.length_buckets": (512,),
                "reward.judge.max_batch": 8,
                "reward.judge.max_candidate_tokens": 96,
                "rollout.dynamic_sampling": False,
                "rollout.old_logp": "sampler",  # no recompute: the sampler's log-probs
            },
        )
    )
    log = read_jsonl(tmp_path / "run" / "grpo_log.jsonl")
    for r in log:
        assert r["time/judge_s"] > 0
        for phase in ("rollout", "reference", "update", "total"):
            assert r[f"time/{phase}_s"] > 0, phase
        parts = sum(r[f"time/{p}_s"] for p in ("rollout", "judge", "reference", "update"))
        assert parts <= r["time/total_s"]
        assert r["judge/candidates"] == 16 and r["judge/judged"] > 0
        # the configured rubric file scored this step (its hash is in the id)
        assert r["judge/rubric"].endswith(TEST_RUBRIC.sha256[:12])
        for dim in ("relevance", "fluency", "empathy", "persona_consistency", "safety"):
            assert 1.0 <= r[f"judge/{dim}"] <= 5.0
            assert 1.0 <= r[f"reward/rubric/{dim}"] <= 5.0
        assert 0.0 < r["reward/rubric"] <= 1.0
        assert r["rollout/tokens_per_s"] > 0 and r["update/tokens_per_s"] > 0
        # One on-policy pass from the sampler's log-probs: they equal the update's own
        # (f32), so the ratio is 1 and nothing is clipped.
        assert abs(r["ratio_min"] - 1) < 1e-3 and abs(r["ratio_max"] - 1) < 1e-3
        assert r["clip_frac"] == 0 and r["time/old_logp_s"] < 0.01
    # The ledger's totals are the configured mix of the components.
    for r in read_jsonl(tmp_path / "run" / "rollouts.jsonl"):
        mix = 0.25 * r["reward/format"] + 0.25 * r["reward/emotion"] + 0.5 * r["reward/rubric"]
        assert abs(r["reward/total"] - mix) < 1e-5
    # The same scalars reach TensorBoard.
    events = b"".join(p.read_bytes() for p in (tmp_path / "run" / "tb").rglob("*tfevents*"))
    for tag in (b"train/time/judge_s", b"train/judge/empathy", b"train/reward/rubric"):
        assert tag in events, tag
