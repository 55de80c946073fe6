"""SFT in the dialogue form (data.example="dialogue", the paper trainer's default): the
driver trains on whole dialogues, unpacked and packed, with held-out loss; the target
buckets hold every row's targets with few compiled shapes."""

import json

import numpy as np
import pytest

from kardia_jax.cli import main
from kardia_jax.data.examples import build_examples
from kardia_jax.data.pipeline import build_sft_dataset
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.data.validate import load_dialogues
from kardia_jax.train.step import target_bucket, with_target_index

from .conftest import tiny_overrides
from .test_sft import TINY, read_log

# Sample dialogues are ~950-1570 tokens with the small tokenizer: 1536 cuts the longest.
DIALOGUE = {"data.example": "dialogue", "data.max_length": 1536, "data.buckets": (1024, 1536)}


def _sample_dialogue_examples(small_tokenizer, max_length: int):
    tok = load_tokenizer(small_tokenizer)
    dialogues, _ = load_dialogues("sample:train", split="train")
    return build_examples(dialogues, tok, max_length=max_length, form="dialogue")


@pytest.mark.parametrize("pack", [False, True])
def test_dialogue_form_sft_on_the_sample_lowers_the_loss(tmp_path, small_tokenizer, capsys, pack):
    steps = 8
    overrides = {**DIALOGUE, "data.pack": pack, "train.steps": steps, "checkpoint.every": 0}
    if pack:  # dialogues cut to <= 1024 tokens, rows of 2048: two or three per row
        overrides.update({"data.max_length": 1024, "data.buckets": (2048,)})
    args = ["sft", "--config", TINY, "--workdir", str(tmp_path)]
    assert main(args + tiny_overrides(small_tokenizer, **overrides)) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert all(r["skipped"] == 0 for r in log)
    # whole dialogues: hundreds of target tokens per row (a turn example has ~100);
    # packed, more per row than any one dialogue has
    examples = _sample_dialogue_examples(small_tokenizer, overrides["data.max_length"])
    most = max(int(e.loss_mask.sum()) for e in examples)
    assert min(r["tokens"] for r in log) > 8 * (most if pack else 400)
    first, last = log[0]["loss"], log[-1]["loss"]
    print(f"\npack={pack}: loss {first:.3f} -> {last:.3f}, eval {result['eval_loss']:.3f}")
    assert last < 0.75 * first, (first, last)
    assert result["eval_loss"] is not None and result["eval_loss"] < first
    # one example per dialogue of the training profiles (the sample's 34, minus held-out)
    assert 20 <= result["examples"] < 34


def test_target_buckets_hold_dialogue_rows_with_few_shapes(small_tokenizer):
    examples = _sample_dialogue_examples(small_tokenizer, 2048)
    shapes = set()
    for seed in range(4):
        ds = build_sft_dataset(
            examples, batch_size=4, seed=seed, shard_index=0, shard_count=1, num_epochs=1,
            buckets=(1024, 2048),
        )  # fmt: skip
        for batch in ds:
            k = target_bucket(batch)
            out = with_target_index(batch, k)
            most = int((batch["loss_mask"][:, 1:] > 0).sum(1).max())
            assert most <= k <= 1.25 * most + 32  # every target, little padding
            # the listed positions are exactly the targets, row by row
            np.testing.assert_array_equal(
                out["target_weight"].sum(1), (batch["loss_mask"][:, 1:] > 0).sum(1)
            )
            for r in range(4):
                pos = out["target_index"][r][out["target_weight"][r] > 0]
                np.testing.assert_array_equal(pos, np.flatnonzero(batch["loss_mask"][r, 1:]))
            shapes.add((batch["input_ids"].shape[1], k))
    # fixed steps of 32 would give ~a dozen shapes for these ~600-1060 target rows
    assert len(shapes) <= 5, shapes
