"""The dialogue form (data.example="dialogue", ms-swift's multi-turn default): the whole
chat as one sequence equal to the chat template's rendering, a loss mask equal to the
union of the turn-form masks, cut only between whole turns, and packable."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from kardia_jax.data.examples import build_examples, encode_whole_dialogue
from kardia_jax.data.pipeline import build_sft_dataset
from kardia_jax.data.schema import RecordError, parse_record
from kardia_jax.data.validate import ValidationReport
from kardia_jax.errors import ConfigError, DataError

from .helpers import answer


@pytest.fixture(scope="module")
def dialogue_examples(sample_dialogues, tokenizer):
    # long enough for every sample dialogue: nothing is cut
    return build_examples(sample_dialogues, tokenizer, max_length=8192, form="dialogue")


def _chat(d, upto: int) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in d.messages[: upto + 1]]


def test_dialogue_form_is_the_template_rendering_and_the_union_of_turn_masks(
    sample_dialogues, sample_examples, dialogue_examples, tokenizer
):
    assert len(dialogue_examples) == len(sample_dialogues)
    by_dialogue = collections.defaultdict(list)
    for ex in sample_examples:
        by_dialogue[id(ex.dialogue)].append(ex)
    for d, ex in zip(sample_dialogues, dialogue_examples, strict=True):
        last = d.assistant_turns[-1]
        assert ex.dialogue is d and ex.turn == last and ex.dropped_turns == 0
        # transformers' apply_chat_template renders the chat through the tokenizer's
        # own template: the token stream is exactly that, up to the last answer
        ids = tokenizer.apply_chat_template(_chat(d, last), tokenize=True, return_dict=False)
        assert ex.input_ids.tolist() == list(ids)
        # the loss mask: every turn example's mask, placed where its prefix sits
        union = np.zeros(len(ex), np.uint8)
        turns = by_dialogue[id(d)]
        assert [t.turn for t in turns] == d.assistant_turns
        for t in turns:
            assert t.dropped_turns == 0
            np.testing.assert_array_equal(ex.input_ids[: len(t)], t.input_ids)
            union[: len(t)] |= t.loss_mask
        np.testing.assert_array_equal(ex.loss_mask, union)
        # prompt = what comes before the first answer, as a generation prompt renders it
        first = d.assistant_turns[0]
        prompt = tokenizer.apply_chat_template(
            _chat(d, first - 1), tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert ex.prompt_ids.tolist() == list(prompt)
        assert ex.loss_mask[ex.prompt_length] == 1 and not ex.loss_mask[: ex.prompt_length].any()


def _long_record(record, n_exchanges: int, words: int, trailing_user: bool = False) -> dict:
    user = record["messages"][1]
    msgs = [record["messages"][0]]
    for i in range(n_exchanges):
        msgs += [
            {**user, "content": f"turn {i}: " + "word " * words},
            {"role": "assistant", "content": answer()},
        ]
    if trailing_user:
        msgs.append({**user, "content": "and one more thing"})
    return {**record, "messages": msgs}


def test_an_over_long_dialogue_is_cut_after_the_last_whole_turn_that_fits(record, tokenizer):
    d = parse_record(_long_record(record, n_exchanges=6, words=40), location="long.jsonl:1")
    full = encode_whole_dialogue(d, tokenizer, max_length=100_000)
    turns = build_examples([d], tokenizer, max_length=100_000)
    ends = [len(t) for t in turns]  # where each assistant turn's segment ends in `full`
    for budget, kept in ((ends[2], 3), (ends[2] + 1, 3), (ends[3] - 1, 3), (ends[5], 6)):
        report = ValidationReport(source="long", mode="skip")
        (cut,) = build_examples([d], tokenizer, max_length=budget, report=report, form="dialogue")
        assert len(cut) == ends[kept - 1] <= budget  # never inside a turn
        assert cut.turn == d.assistant_turns[kept - 1] and cut.dropped_turns == 6 - kept
        np.testing.assert_array_equal(cut.input_ids, full.input_ids[: len(cut)])
        np.testing.assert_array_equal(cut.loss_mask, full.loss_mask[: len(cut)])
        assert tokenizer.decode(cut.input_ids[-2:].tolist()) == "<|im_end|>\n"
        assert report.truncated == (kept < 6) and report.examples == 1


def test_a_trailing_user_turn_is_no_target_and_no_truncation(record, tokenizer):
    d = parse_record(_long_record(record, 2, 5, trailing_user=True))
    ex = encode_whole_dialogue(d, tokenizer)
    assert ex.turn == len(d.messages) - 2 and ex.dropped_turns == 0
    assert "and one more thing" not in tokenizer.decode(ex.input_ids.tolist())


def test_a_dialogue_whose_first_turn_does_not_fit_is_too_long(record, tokenizer):
    d = parse_record(_long_record(record, 3, 200), location="long.jsonl:7")
    first_turn = len(build_examples([d], tokenizer, max_length=100_000)[0])
    err = encode_whole_dialogue(d, tokenizer, max_length=first_turn - 1)
    assert isinstance(err, RecordError) and err.reason == "too_long"
    assert err.field == "messages[2]"
    assert not isinstance(encode_whole_dialogue(d, tokenizer, max_length=first_turn), RecordError)
    with pytest.raises(DataError, match=r"^long.jsonl:7: field messages\[2\]: .* > max_length"):
        build_examples([d], tokenizer, max_length=first_turn - 1, form="dialogue")
    report = ValidationReport(source="long", mode="skip")
    out = build_examples([d], tokenizer, max_length=first_turn - 1, report=report, form="dialogue")
    assert out == [] and report.examples_skipped == {"too_long": 1}


def test_unknown_form_and_dialogue_prompts_are_config_errors(record, tokenizer):
    d = parse_record(record)
    with pytest.raises(ConfigError, match="data.example='dialog'"):
        build_examples([d], tokenizer, form="dialog")
    with pytest.raises(ConfigError, match="generation prompts are per turn"):
        build_examples([d], tokenizer, form="dialogue", include_target=False)


def test_packed_dialogues_keep_every_dialogue_whole(dialogue_examples):
    exs = dialogue_examples[:9]
    length = max(len(e) for e in exs) + 700  # room for a second, shorter one now and then
    ds = build_sft_dataset(
        exs, batch_size=2, seed=0, shard_index=0, shard_count=1, num_epochs=1,
        buckets=(length,), pack=True,
    )  # fmt: skip
    seen = collections.Counter()
    for b in ds:
        for row in range(2):
            seg = b["segment_ids"][row]
            for s in range(1, seg.max() + 1):
                (where,) = np.nonzero(seg == s)
                matches = [
                    i for i, e in enumerate(exs)
                    if len(e) == len(where) and (e.input_ids == b["input_ids"][row, where]).all()
                ]  # fmt: skip
                assert len(matches) == 1
                ex = exs[matches[0]]
                np.testing.assert_array_equal(b["loss_mask"][row, where], ex.loss_mask)
                np.testing.assert_array_equal(b["positions"][row, where], np.arange(len(ex)))
                seen[matches[0]] += 1
    assert seen == collections.Counter(range(len(exs)))
