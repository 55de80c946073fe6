"""GRPO learns: through the real driver (`kardia-jax grpo`: sampler, reward, group
advantages, the jitted step with KL to the frozen reference), a tiny random policy
with a verifiable reward (emit span markers) raises its mean reward by >= 0.3."""

import json

import numpy as np

from ..train.conftest import run_cli
from .conftest import driver_args, read_jsonl

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
STEPS = 16


def test_tiny_policy_learns_a_verifiable_reward(tmp_path, rl_policy, rl_tokenizer, short_data):
    args = driver_args(
        tmp_path,
        rl_policy,
        rl_tokenizer,
        short_data,
        STEPS,
        **{
            "reward.fn": "tests.rl.toy_rewards:span_markers",
            "rollout.group_size": 8,
            "train.lr": 3e-2,
            "grpo.beta": 0.04,
            "rollout.dynamic_sampling": False,
            "export_hf": True,  # selection off: WORKDIR/hf is the last step's policy
        },
    )
    proc = run_cli(args, ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    log = read_jsonl(tmp_path / "grpo_log.jsonl")
    reward = np.asarray([r["reward/total"] for r in log])
    assert len(log) == STEPS
    early, late = reward[:3].mean(), reward[-3:].mean()
    assert late - early >= 0.3, (early, late)
    kl = np.asarray([r["kl"] for r in log])
    assert np.all(np.isfinite(kl)) and np.all(kl >= 0) and kl[-1] > 0
    assert log[0]["compiles"] > 0
    assert [r["compiles"] for r in log[1:]] == [0] * (STEPS - 1)  # one program set
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reference_model"] is True
    assert result["hf"] == str(tmp_path / "hf") and result["last_step"] == STEPS
    assert result["best_step"] is None and result["best_hf"] is None
    assert (tmp_path / "hf" / "config.json").is_file()
    assert not (tmp_path / "best").exists() and not (tmp_path / "selection.jsonl").exists()
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").rglob("*tfevents*"))
    assert b"train/kl" in events and b"train/reward/total" in events
