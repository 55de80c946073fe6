"""GRPO's best checkpoint and its batch: held-out prompts come from profiles it never
trains on; the step with the highest held-out reward (a scripted reward, so the
answer is known) becomes WORKDIR/hf and the last step WORKDIR/last/hf, checked
against a run cut at that step; a resumed run keeps the best it had; a global batch
that is no multiple of the group size is refused."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from kardia_jax.config_files import load_config
from kardia_jax.data.splits import profile_split
from kardia_jax.data.validate import load_dialogues
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rl.config import grpo_config, step_batch
from kardia_jax.rl.grpo import _check_settings, prepare_grpo
from kardia_jax.rl.select import fixed_subset, read_history, scoring_interval

from ..train.conftest import REPO, run_cli
from .conftest import DIALOGUES, driver_args, read_jsonl
from .toy_rewards import SCHEDULE_ENV

TINY = os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py")
ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
FRACTION = 0.25  # 2 of the 8 profiles of tests/rl/conftest.py held out
# Held-out reward at steps 0 (the SFT baseline) .. 4: the baseline is the highest,
# but only RL steps are candidates; step 2 is the best of them.
SCORES = [0.9, 0.2, 0.7, 0.4, 0.5]
BEST = 2


def tiny(**overrides):
    c = load_config(TINY, [])
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def heldout_dialogues(short_data):
    """The held-out profiles' dialogues, found here with the data layer's split."""
    dialogues, _ = load_dialogues(f"{short_data}:train", split="train")
    return profile_split(dialogues, FRACTION, seed=0)[1]


# ---------------------------------------------------------------- settings
def test_global_batch_counts_completions_and_must_divide_into_groups():
    c = grpo_config()  # the paper: global batch 32 = 4 prompts x G 8
    assert (c.rollout.global_batch, c.rollout.group_size) == (32, 8)
    assert step_batch(c.rollout) == (4, 32)
    assert step_batch(tiny().rollout) == (4, 16)
    with pytest.raises(
        ConfigError, match=r"rollout.global_batch=18 .* multiple of rollout.group_size=4"
    ):
        _check_settings(tiny(**{"rollout.global_batch": 18}))
    with pytest.raises(ConfigError, match="rollout.global_batch=0: need >= 1"):
        _check_settings(tiny(**{"rollout.global_batch": 0}))
    with pytest.raises(ConfigError, match=r"minibatches=3 minibatches"):
        from kardia_jax.rl.config import minibatch_rows

        minibatch_rows(tiny(**{"grpo.minibatches": 3}), 1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"select.every": -2}, r"select.every=-2"),
        ({"select.heldout_fraction": 0.0}, r"select.heldout_fraction=0.0: need a fraction"),
        ({"select.heldout_fraction": 1.0}, r"select.heldout_fraction=1.0"),
        ({"select.prompts": 0}, r"select.prompts=0: need >= 1"),
        ({"select.temperature": -1.0}, r"select.temperature=-1.0"),
        ({"select.max_new_tokens": -1}, r"select.max_new_tokens=-1"),
    ],
)
def test_selection_mistakes_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _check_settings(tiny(**overrides))
    # Selection off: its other settings are not used, so not checked.
    _check_settings(tiny(**{**overrides, "select.every": 0}))


def test_scoring_interval_subset_and_history():
    on = tiny()
    assert scoring_interval(on.select, steps_per_epoch=7) == 2
    on.select.every = -1  # the paper's "across RL epochs": once per epoch
    assert scoring_interval(on.select, steps_per_epoch=7) == 7
    on.select.every = 0
    assert scoring_interval(on.select, steps_per_epoch=7) == 0

    subset = fixed_subset(50, 8, seed=3)
    assert len(set(subset.tolist())) == 8 and np.all(np.diff(subset) > 0)
    assert subset.tolist() == fixed_subset(50, 8, seed=3).tolist()  # fixed by the seed
    assert subset.tolist() != fixed_subset(50, 8, seed=4).tolist()
    assert fixed_subset(5, 8, seed=3).tolist() == [0, 1, 2, 3, 4]


def test_history_gives_baseline_and_best_up_to_the_restored_step(tmp_path):
    path = tmp_path / "selection.jsonl"
    rows = [(0, 0.9), (2, 0.3), (4, 0.6), (6, 0.6), (8, 0.95)]  # 6 ties 4: the earlier stays
    path.write_text("".join(json.dumps({"step": s, "score": v}) + "\n" for s, v in rows))
    best = read_history(str(path), upto=6)
    assert (best.step, best.score, best.baseline) == (4, 0.6, 0.9)  # step 8 is past the ckpt
    assert read_history(str(path), upto=8).step == 8
    assert read_history(str(tmp_path / "none.jsonl"), upto=8).step is None


# ---------------------------------------------------------------- held-out data
def test_heldout_prompts_are_profile_disjoint_from_the_training_prompts(
    tmp_path, rl_policy, rl_tokenizer, short_data
):
    common = {
        "model.path": rl_policy,
        "data.tokenizer": rl_tokenizer,
        "data.path": f"{short_data}:train",
        "data.max_length": 256,
        "data.buckets": (256,),
        "model.vocab_multiple": 8,
        "select.heldout_fraction": FRACTION,
    }
    inputs = prepare_grpo(tiny(**common), str(tmp_path / "on"))
    train = {e.dialogue.profile_key for e in inputs.examples}
    held = {e.dialogue.profile_key for e in inputs.heldout}
    assert len(held) == 2 and len(train) == 6 and not train & held
    assert held == {d.profile_key for d in heldout_dialogues(short_data)}
    every_prompt = sum(n for _, _, n in DIALOGUES)
    assert len(inputs.examples) + len(inputs.heldout) == every_prompt
    assert inputs.data["held_out"]["profiles"] == 2 and inputs.data["split"] == "train"

    off = prepare_grpo(tiny(**{**common, "select.every": 0}), str(tmp_path / "off"))
    assert len(off.examples) == every_prompt and off.heldout == []

    # One profile cannot be split: refused naming the setting.
    one = tmp_path / "one.jsonl"
    with open(short_data, encoding="utf-8") as f:
        one.write_text(f.readline())
    with pytest.raises(DataError, match="select.heldout_fraction: .*two profiles"):
        prepare_grpo(tiny(**{**common, "data.path": f"{one}:train"}), str(tmp_path / "one"))


# ---------------------------------------------------------------- the driver
def weights(hf_dir) -> dict[str, np.ndarray]:
    return load_file(os.path.join(hf_dir, "model.safetensors"))


def assert_same(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def differ(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not np.array_equal(wa[k], wb[k]) for k in wa)


def select_run(workdir, steps, policy, tokenizer, data, held):
    """`kardia-jax grpo` with selection at every step and the scripted reward."""
    schedule = workdir.parent / f"{workdir.name}-schedule.json"
    schedule.write_text(
        json.dumps(
            {
                "log": str(workdir / "grpo_log.jsonl"),
                "heldout": [d.situation for d in held],
                "scores": SCORES,
            }
        )
    )
    args = driver_args(
        workdir,
        policy,
        tokenizer,
        data,
        steps,
        **{
            "reward.fn": "tests.rl.toy_rewards:scheduled",
            "select.every": 1,
            "select.heldout_fraction": FRACTION,
            "select.prompts": 8,
            "export_hf": True,
            "grpo.beta": 0.0,  # no reference model: a faster step
            "train.lr": 1e-2,  # every step moves the weights
            # A constant lr: a run cut at step 2 takes the same first two steps.
            "train.min_lr_ratio": 1.0,
        },
    )
    proc = run_cli(args, {**ONE_DEVICE, SCHEDULE_ENV: str(schedule)})
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1]), out


def new_best_lines(out) -> list[int]:
    return [int(line.split()[2]) for line in out.splitlines() if line.startswith("selection: step")]


def test_best_step_is_exported_kept_on_resume_and_last_step_kept_apart(
    tmp_path, rl_policy, rl_tokenizer, short_data
):
    held = heldout_dialogues(short_data)
    n_held = sum(len(d.assistant_turns) for d in held)
    run = (rl_policy, rl_tokenizer, short_data, held)

    # Straight through 4 steps.
    a = tmp_path / "a"
    result, out = select_run(a, 4, *run)
    assert result["best_step"] == BEST and result["last_step"] == 4
    assert result["best_score"] == pytest.approx(SCORES[BEST])
    assert result["baseline_score"] == pytest.approx(SCORES[0])  # reported, not a candidate
    assert result["hf"] == str(a / "hf") and result["last_hf"] == str(a / "last" / "hf")
    assert result["best_hf"] == str(a / "best" / "hf")
    history = read_jsonl(a / "selection.jsonl")
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4]
    assert [r["score"] for r in history] == pytest.approx(SCORES)
    # The reward saw each step's policy at that step, on every held-out prompt.
    assert [r["reward/step"] for r in history] == [0, 1, 2, 3, 4]
    assert all(r["prompts"] == n_held for r in history)
    assert [r["candidate"] for r in history] == [False, True, True, True, True]
    assert [r["best"] for r in history] == [False, True, True, False, False]
    assert new_best_lines(out) == [1, 2]  # a line per export
    assert "selection: baseline (step 0) held-out reward 0.9000" in out
    assert_same(a / "hf", a / "best" / "hf")
    assert differ(a / "hf", a / "last" / "hf")  # the weights moved after step 2
    # No held-out prompt was trained on (the ledger names each prompt's record line).
    held_lines = {int(d.location.rsplit(":", 1)[1]) for d in held}
    trained = {
        int(r["prompt"].split()[0].rsplit(":", 1)[1]) for r in read_jsonl(a / "rollouts.jsonl")
    }
    assert trained and not trained & held_lines

    # The same run cut at step 2 (its last step, and its best): WORKDIR/hf of the
    # straight run is exactly its step-2 policy.
    c = tmp_path / "c"
    result, _ = select_run(c, 2, *run)
    assert (result["best_step"], result["last_step"]) == (BEST, 2)
    assert_same(c / "last" / "hf", c / "hf")
    assert_same(a / "hf", c / "hf")
    step2 = tmp_path / "step2"
    shutil.copytree(c / "hf", step2)

    # Resumed to 4 steps from its step-2 checkpoint, with a history row that a killed
    # run wrote after that checkpoint (dropped: the run goes on from step 2's state).
    with open(c / "selection.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "score": 0.99, "candidate": True, "best": True}) + "\n")
    result, out = select_run(c, 4, *run)
    assert "resumed from step 2" in out, out
    assert (result["best_step"], result["last_step"]) == (BEST, 4)
    assert result["best_score"] == pytest.approx(SCORES[BEST])
    assert result["baseline_score"] == pytest.approx(SCORES[0])  # from the history
    history = read_jsonl(c / "selection.jsonl")
    assert [r["step"] for r in history] == [0, 1, 2, 3, 4]
    assert [r["score"] for r in history] == pytest.approx(SCORES)
    assert new_best_lines(out) == []  # 0.4 and 0.5 do not beat step 2's 0.7
    assert "selection: baseline" not in out  # the baseline is not scored again
    assert_same(c / "hf", step2)
    assert_same(c / "last" / "hf", a / "last" / "hf")  # resumed = straight
