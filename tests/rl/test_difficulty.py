"""`kardia-jax rl split-difficulty`: the policy's completions, scored by a reward
the test controls, put each dialogue in easy or hard by its mean reward; the files
are the input records, readable by `data validate` and the GRPO loader."""

import json
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict

from kardia_jax.cli import main
from kardia_jax.data.reader import iter_records
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.errors import ConfigError
from kardia_jax.rl.difficulty import DifficultySettings, split_difficulty
from kardia_jax.rl.grpo import load_grpo_prompts

from .conftest import DIALOGUES, read_jsonl, short_record, write_jsonl

# Base reward per gold emotion; a dialogue's second turn earns 0.2 more.
BASE = {"joyful": 0.8, "proud": 0.8, "grateful": 0.8, "angry": 0.35}
LATER_TURN = 0.2


class ControlledReward:
    """Reward by the prompt's gold emotion and turn, +-0.1 on alternate samples (so a
    prompt's mean is only right if all its samples reach the reward); counts calls."""

    def __init__(self):
        self.completions = 0

    def expected(self, emotion, later):
        return BASE.get(emotion, 0.1) + (LATER_TURN if later else 0.0)

    def __call__(self, texts, contexts, gold):
        self.completions += len(texts)
        total = [
            self.expected(g, len(c.history) > 1) + (0.1 if j % 2 else -0.1)
            for j, (c, g) in enumerate(zip(contexts, gold, strict=True))
        ]
        return {"total": np.asarray(total, np.float32)}


def run_split(policy, data, out, turns):
    reward = ControlledReward()
    result = split_difficulty(
        policy,
        data,
        str(out),
        DifficultySettings(samples=2, threshold=0.5, max_new_tokens=8, turns=turns),
        dtype="float32",
        max_length=256,
        reward_fn=reward,
    )
    return result, reward


def test_controlled_reward_puts_the_expected_dialogues_in_easy_and_hard(
    tmp_path, rl_policy, rl_tokenizer, short_data
):
    result, reward = run_split(rl_policy, f"{short_data}:train", tmp_path / "all", "all")
    prompts = sum(n for _, _, n in DIALOGUES)
    assert reward.completions == 2 * prompts  # N = 2 samples of every prompt
    # angry: turns 0.35 and 0.55 -> 0.45 < 0.5: hard with every turn counted.
    easy = ["joyful", "proud", "grateful"]
    hard = ["lonely", "afraid", "sad", "angry", "anxious"]
    assert result["counts"] == {
        "dialogues": 8,
        "easy": 3,
        "hard": 5,
        "unscored": 0,
        "prompts": prompts,
    }
    # The files hold the input records themselves, in input order.
    raw = [r for _, r in iter_records(short_data)]
    assert read_jsonl(result["files"]["easy"]) == [r for r in raw if r["emotion"] in easy]
    assert read_jsonl(result["files"]["hard"]) == [r for r in raw if r["emotion"] in hard]
    report = json.loads(Path(result["files"]["report"]).read_text())
    for row, (emotion, _, n) in zip(report["dialogues"], DIALOGUES, strict=True):
        means = [reward.expected(emotion, k > 0) for k in range(n)]
        assert row["split"] == ("easy" if emotion in easy else "hard")
        assert [p["mean_reward"] for p in row["prompts"]] == pytest.approx(means, abs=1e-6)
        assert row["mean_reward"] == pytest.approx(np.mean(means), abs=1e-6)
        assert all(len(p["rewards"]) == 2 for p in row["prompts"])

    # Only the last turn: angry's 0.55 makes it easy.
    result, reward = run_split(rl_policy, f"{short_data}:train", tmp_path / "last", "last")
    assert reward.completions == 2 * len(DIALOGUES)
    easy_last = ["joyful", "angry", "proud", "grateful"]
    assert [r["emotion"] for r in read_jsonl(result["files"]["easy"])] == easy_last


def test_cli_writes_files_that_validate_and_feed_grpo(
    tmp_path, rl_policy, rl_tokenizer, short_data, capsys
):
    # The real reward (format + emotion): a random policy earns 0 everywhere.
    argv = ["rl", "split-difficulty", "--model", rl_policy, "--data", f"{short_data}:train"]
    argv += ["--out", str(tmp_path), "--samples", "2", "--max-new-tokens", "8"]
    argv += ["--dtype", "float32", "--max-length", "256", "--threshold", "0.25"]
    assert main(argv) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert err.strip().splitlines()[-1].startswith("sampled 12/12 prompts")
    assert result["counts"]["hard"] == 8 and result["files"]["easy"] == str(tmp_path / "easy.jsonl")
    assert len(read_jsonl(tmp_path / "hard.jsonl")) == 8 and not read_jsonl(tmp_path / "easy.jsonl")
    report = json.loads((tmp_path / "difficulty.json").read_text())
    assert report["counts"]["hard"] == 8 and report["reward"]["weights"] == [0.5, 0.5, 0.0]
    assert all(0.0 <= p["mean_reward"] <= 1.0 for d in report["dialogues"] for p in d["prompts"])
    hard = str(tmp_path / "hard.jsonl")
    assert main(["data", "validate", hard, "--tokenizer", rl_tokenizer]) == 0
    assert "OK" in capsys.readouterr().out
    tok = load_tokenizer(rl_tokenizer)
    dcfg = ConfigDict(dict(path=f"{hard}:train", mode="strict", max_length=256))
    prompts = load_grpo_prompts(dcfg, tok)
    assert len(prompts) == sum(n for _, _, n in DIALOGUES)


def test_bad_input_is_refused_naming_the_file_or_flag(tmp_path, rl_policy, capsys):
    bad = dict(short_record(0, *DIALOGUES[0]), emotion="meh")
    data = write_jsonl(tmp_path / "bad.jsonl", [short_record(1, *DIALOGUES[1]), bad])
    base = ["rl", "split-difficulty", "--data", f"{data}:train", "--out", str(tmp_path / "out")]
    assert main([*base, "--model", rl_policy]) == 2
    assert (
        capsys.readouterr().err.strip().endswith(f"{data}:2: field emotion: unknown emotion 'meh'")
    )
    assert main([*base, "--model", str(tmp_path)]) == 2
    assert f"--model {tmp_path}: not a Hugging Face checkpoint" in capsys.readouterr().err
    assert main([*base, "--model", rl_policy, "--samples", "0"]) == 2
    assert "--samples 0: need >= 1" in capsys.readouterr().err
    assert main([*base, "--model", rl_policy, "--weights", "0", "0", "1"]) == 2
    assert "a rubric weight needs --judge" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written on refusal
    (tmp_path / "file").write_text("")
    assert main([*base[:-1], str(tmp_path / "file"), "--model", rl_policy]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--turns"):
        DifficultySettings(turns="middle")
