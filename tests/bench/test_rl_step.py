"""bench/rl_step.py's pieces that decide what is compared: the driver's prompt stream
limited to the work's prompts, the shared reward's lookups, the settings given to our
driver, the summary of a runner's steps, and TRL's batch split. No trainer runs here
(the peers' packages are not test dependencies)."""

import dataclasses
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from kardia_jax.configs import grpo_tiny
from kardia_jax.data.examples import TokenizedExample
from kardia_jax.data.pipeline import build_prompt_dataset
from kardia_jax.data.spans import FourSpans
from kardia_jax.data.tokenizer import qwen2p5_tokenizer_dir

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench")


def load(name):
    sys.path.insert(0, BENCH)  # the scripts import rl_work by path, as they do when run
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCH)


rl_step = load("rl_step")
rl_work = load("rl_work")


class FakeGRPO:
    build_prompt_dataset = staticmethod(build_prompt_dataset)


def example(n: int, first: int) -> TokenizedExample:
    ids = np.arange(first, first + n, dtype=np.int32)
    return TokenizedExample(ids, np.zeros(n, np.uint8), n, 0, "x:1", 1, "sad")


def test_prompt_stream_is_the_works_prompts_with_the_drivers_indices():
    examples = [example(3 + i % 4, 100 * i) for i in range(10)]
    keep = [7, 2, 5]
    grpo = FakeGRPO()
    rl_step.only_work_prompts(grpo, keep)
    batches = iter(
        grpo.build_prompt_dataset(
            examples, batch_size=3, seed=0, shard_index=0, shard_count=1, buckets=(8,), pad_id=0
        )
    )
    for _ in range(4):  # epochs over the three kept prompts
        b = next(batches)
        assert sorted(b["index"].tolist()) == sorted(keep)
        for row, i in zip(b["input_ids"], b["index"], strict=True):
            want = examples[i].prompt_ids
            np.testing.assert_array_equal(row[-len(want) :], want)  # left-padded
            assert not row[: -len(want)].any()


def make_work(folder, model_dir: str, P: int, G: int):
    settings = dict(max_new_tokens=16, temperature=1.0, beta=0.04, lr=1e-6, steps=2, seed=0)
    return rl_work.Work(str(folder), model_dir, "smollm2", [], P, G, **settings)


def test_our_settings_exist_in_the_drivers_config(tmp_path):
    work = make_work(tmp_path, "m", 4, 8)
    config = grpo_tiny.get_config()
    overrides = rl_step.ours_overrides(work, str(tmp_path))
    for key in overrides:
        node = config
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert overrides["rollout.global_batch"] == 32 and overrides["rollout.group_size"] == 8
    assert overrides["grpo.mu"] == 1 and overrides["grpo.minibatches"] == 1


def test_reward_scores_completions_of_the_indexed_examples(tmp_path):
    tok_dir = str(qwen2p5_tokenizer_dir())
    exs = rl_work.examples(tok_dir)
    a = 0
    b = next(i for i, e in enumerate(exs) if e.emotion != exs[a].emotion)
    (tmp_path / "work.json").write_text(json.dumps(make_work(tmp_path, tok_dir, 2, 2).to_json()))
    rl_work.load_work(str(tmp_path))
    answer = FourSpans("They feel it.", "So I say so.", exs[a].emotion, "I hear you.").format()
    got = rl_work.reward([a, b, a], [answer, answer, "no spans at all"])
    assert got[0] == pytest.approx(1.0)  # format and the gold emotion of example a
    assert got[1] == pytest.approx(0.5)  # format only: example b's gold differs
    assert got[2] == pytest.approx(0.0)


def test_summary_is_over_the_steps_after_the_warm_up():
    s = rl_step.summarise(
        {
            "step_seconds": [100.0, 10.0, 30.0, 20.0],
            "new_tokens": [1, 100, 300, 200],
            "phases": {"rollout": [50.0, 4.0, 9.0, 6.0]},
        }
    )
    assert s["step_s"] == 20.0 and s["timed_steps"] == 3
    assert s["tokens_per_s"] == pytest.approx(600 / 60)
    assert s["phases_s"] == {"rollout": 6.0}


def test_trl_batch_makes_one_optimizer_step_of_all_completions():
    rl_peer_trl = load("rl_peer_trl")  # imports trl only when run
    for rows, batch in ((32, 8), (4, 4), (12, 6), (6, 6), (7, 7), (18, 6)):
        assert rl_peer_trl.device_batch(rows) == batch
        assert rows % batch == 0


def test_set_options_parse_as_literals_and_refuse_a_missing_value():
    sets = rl_step.parse_sets(["model.remat=dots_no_batch", "grpo.beta=0.1", "x=True"])
    assert sets == {"model.remat": "dots_no_batch", "grpo.beta": 0.1, "x": True}
    with pytest.raises(SystemExit, match="model.remat"):
        rl_step.parse_sets(["model.remat"])


def test_trainer_steps_caps_a_runner_below_the_works_steps(tmp_path):
    assert rl_step.parse_caps(["tunix=2", "trl=3"]) == {"tunix": 2, "trl": 3}
    for bad in ("tunix", "nobody=2", "tunix=0", "tunix=x"):
        with pytest.raises(SystemExit, match="--trainer-steps"):
            rl_step.parse_caps([bad])
    work = dataclasses.replace(make_work(tmp_path, "m", 4, 8), steps=4)
    (tmp_path / "work.json").write_text(json.dumps(work.to_json()))
    assert rl_work.load_work(str(tmp_path)).steps == 4
    assert rl_work.load_work(str(tmp_path), 2).steps == 2
    assert rl_work.load_work(str(tmp_path), 9).steps == 4  # a cap, never more steps
