"""GRPO run settings: the shipped configs load and pass the driver's checks, and
mistakes are refused before any model loads, naming the setting."""

import os

import pytest

from kardia_jax.config_files import load_config
from kardia_jax.errors import ConfigError
from kardia_jax.rl.grpo import _check_settings

from ..train.conftest import REPO


def config(name="grpo_tiny.py", **overrides):
    c = load_config(os.path.join(REPO, "kardia_jax", "configs", name), [])
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


@pytest.mark.parametrize("name", ["grpo_qwen2p5_3b.py", "grpo_qwen2p5_7b.py"])
def test_paper_configs_are_the_recipe_and_need_a_judge(name):
    c = config(name)
    # Global batch 32 completions (ms-swift's count): 4 prompts x G 8, one update each.
    assert (c.rollout.group_size, c.rollout.global_batch, c.train.lr) == (8, 32, 1e-6)
    assert c.grpo.minibatches == 1 and c.grpo.mu == 1
    assert c.train.epochs == 2 and c.reward.rubric == pytest.approx(1 / 3)
    assert c.select.every == -1  # the best checkpoint across RL epochs
    # Our additions are off.
    assert not c.rollout.dynamic_sampling and not c.rollout.mask_truncated
    assert not c.rollout.mask_zero_variance and not c.grpo.dual_clip
    assert c.grpo.clip_high == c.grpo.clip_low
    with pytest.raises(ConfigError, match="set reward.judge_path"):
        _check_settings(c)
    _check_settings(config(name, **{"reward.judge_path": "/ckpt/Qwen3-8B"}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rollout.old_logp": "cached"}, "rollout.old_logp='cached'"),
        ({"grpo.mu": 0}, "grpo.mu=0: need >= 1"),
        ({"rollout.group_size": 1}, "rollout.group_size must be >= 2"),
        ({"grpo.beta": -0.1}, "grpo.beta=-0.1"),
        ({"reward.rubric": 0.5}, "needs a judge: set reward.judge_path"),
        ({"reward.fn": "tests.rl.toy_rewards"}, "expected 'module:callable'"),
        ({"reward.fn": "tests.rl.toy_rewards:nothing"}, "reward.fn=.*cannot import"),
        ({"reward.fn": "tests.rl.toy_rewards:CONSTANT"}, "is not callable"),
        ({"reward.judge_path": "/j", "reward.judge.mode": "vote"}, "reward.judge: judge mode"),
    ],
)
def test_mistakes_are_refused_naming_the_setting(overrides, message):
    _check_settings(config())  # the tiny config itself is fine
    with pytest.raises(ConfigError, match=message):
        _check_settings(config(**overrides))


def test_a_custom_reward_needs_no_judge():
    _check_settings(config(**{"reward.rubric": 0.5, "reward.fn": "tests.rl.toy_rewards:planted"}))


def test_every_grpo_setting_says_where_its_value_comes_from():
    """Each field of grpo_config() is marked "paper", "ours" or "unused" in its own
    comment or the comment block just above it."""
    import inspect

    from kardia_jax.rl.config import grpo_config

    lines = inspect.getsource(grpo_config).splitlines()
    for i, line in enumerate(lines):
        code = line.strip()
        if not code.startswith("c.") or "ConfigDict()" in code or " = " not in code:
            continue
        comments = [code.partition("#")[2]]
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comments.append(lines[j])
            j -= 1
        text = " ".join(comments).lower()
        assert any(w in text for w in ("paper", "ours", "unused")), code
