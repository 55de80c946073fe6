"""Turn-level examples: the loss mask covers exactly the target assistant tokens, the
token stream equals the chat template's, and truncation drops the oldest exchanges but
keeps the system prompt and the latest user turn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kardia_jax.data.examples import build_examples, encode_dialogue, turn_examples
from kardia_jax.data.schema import Message, RecordError, parse_record
from kardia_jax.data.validate import ValidationReport


def test_loss_mask_decodes_to_exactly_the_target(sample_dialogues, sample_examples, tokenizer):
    turns = turn_examples(sample_dialogues)
    assert len(turns) == len(sample_examples) == 329
    for turn, ex in zip(turns, sample_examples, strict=True):
        mask = ex.loss_mask.astype(bool)
        assert tokenizer.decode(ex.input_ids[mask].tolist()) == turn.target + "<|im_end|>"
        # one contiguous run, ending just before the final "\n"
        (where,) = np.nonzero(mask)
        assert where[-1] - where[0] + 1 == mask.sum() and where[-1] == len(mask) - 2
        assert where[0] == ex.prompt_length
        assert ex.emotion == turn.gold_emotion == turn.dialogue.emotion
        assert ex.dialogue is turn.dialogue and ex.turn == turn.turn


def test_tokens_equal_the_chat_template(sample_dialogues, sample_examples, tokenizer):
    turns = turn_examples(sample_dialogues)
    for turn, ex in list(zip(turns, sample_examples, strict=True))[::7]:
        msgs = [*turn.prompt_messages, {"role": "assistant", "content": turn.target}]
        ids = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False)
        assert ex.input_ids.tolist() == list(ids)
        prompt = tokenizer.apply_chat_template(
            turn.prompt_messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert ex.prompt_ids.tolist() == list(prompt)


def test_span_markers_are_single_tokens_in_targets(sample_examples, tokenizer):
    marker_ids = set(range(151665, 151673))
    for ex in sample_examples[:20]:
        target = set(ex.input_ids[ex.loss_mask.astype(bool)].tolist())
        assert marker_ids <= target


def _long_dialogue(record, n_exchanges: int, words: int):
    user, assistant = record["messages"][1], record["messages"][2]
    msgs = [record["messages"][0]]
    for i in range(n_exchanges):
        msgs += [{**user, "content": f"turn {i}: " + "word " * words}, assistant]
    return parse_record({**record, "messages": msgs}, location="long.jsonl:1")


def test_truncation_drops_oldest_exchanges_and_keeps_system_and_user(record, tokenizer):
    d = _long_dialogue(record, n_exchanges=6, words=60)
    full = encode_dialogue(d, tokenizer, max_length=4096)
    cut = encode_dialogue(d, tokenizer, max_length=400)
    assert [e.dropped_turns for e in full] == [0] * 6
    assert all(len(e) <= 400 for e in cut)
    assert cut[-1].dropped_turns > 0
    last = tokenizer.decode(cut[-1].input_ids.tolist())
    assert last.startswith("<|im_start|>system\nYou are a supportive assistant.")
    assert "turn 5: " in last  # the latest user turn stays
    kept = 6 - cut[-1].dropped_turns  # exchanges 0..dropped-1 are gone, the rest stay
    assert all((f"turn {i}: " in last) == (i >= 6 - kept) for i in range(6))
    # same target, same mask length
    assert cut[-1].loss_mask.sum() == full[-1].loss_mask.sum()
    # it keeps as much history as fits: one more (equal-sized) exchange would not
    exchange = (len(full[-1]) - len(cut[-1])) // cut[-1].dropped_turns
    assert len(cut[-1]) + exchange > 400
    report = ValidationReport(source="long", mode="skip")
    build_examples([d], tokenizer, max_length=400, report=report)
    assert report.truncated == sum(e.dropped_turns > 0 for e in cut) and report.examples == 6


def test_too_long_even_without_history(record, tokenizer):
    d = _long_dialogue(record, n_exchanges=2, words=400)
    results = encode_dialogue(d, tokenizer, max_length=300)
    assert all(isinstance(r, RecordError) and r.reason == "too_long" for r in results)
    assert results[1].field == "messages[4]"


def test_prompt_only_examples_end_with_the_assistant_header(record, tokenizer):
    d = parse_record(record)
    (a, b) = encode_dialogue(d, tokenizer, include_target=False)
    for ex in (a, b):
        assert tokenizer.decode(ex.input_ids[-3:].tolist()) == "<|im_start|>assistant\n"
        assert ex.loss_mask.sum() == 0 and ex.prompt_length == len(ex)


def test_straddling_target_boundary_is_refused(record, tokenizer):
    # A target starting with a newline would merge with the header's "\n"; the parser
    # never produces one, but a hand-built Dialogue could: the builder must notice.
    d = parse_record(record)
    bad = dataclasses.replace(d.messages[2], content="\n\n" + d.messages[2].content)
    d = dataclasses.replace(d, messages=(*d.messages[:2], bad, *d.messages[3:]))
    assert isinstance(d.messages[2], Message)
    with pytest.raises(Exception, match="straddles the target boundary"):
        encode_dialogue(d, tokenizer)
