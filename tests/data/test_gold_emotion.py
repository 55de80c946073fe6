"""The gold emotion has one source, the record's `emotion` field (the dataset card's
gold label): examples, the GRPO reward and evaluation read it, the turn is still
trained as written, and `data validate` / `data stats` report turns whose emotion span
disagrees with the field without failing."""

from __future__ import annotations

import json

import numpy as np

from kardia_jax.cli import main
from kardia_jax.data.examples import build_examples, turn_examples
from kardia_jax.data.schema import parse_record
from kardia_jax.data.stats import emotion_disagreements
from kardia_jax.rewards.combine import KardiaReward, RewardWeights
from kardia_jax.rl.rollout import score

from .helpers import BASE_RECORD, answer


def _disagreeing(record: dict, field: str = " Lonely", spans=("sad", "lonely")) -> dict:
    msgs = list(record["messages"])
    msgs[2] = {"role": "assistant", "content": answer(emotion=spans[0])}
    msgs[4] = {"role": "assistant", "content": answer(emotion=spans[1])}
    return {**record, "emotion": field, "messages": msgs}


def test_every_example_carries_the_record_field_not_the_turn_span(record, tokenizer):
    d = parse_record(_disagreeing(record), location="x.jsonl:3")
    assert d.messages[2].spans.emotion == "sad" and d.emotion == "lonely"  # normalised
    assert [t.gold_emotion for t in turn_examples([d])] == ["lonely", "lonely"]
    for form in ("turn", "dialogue"):
        for ex in build_examples([d], tokenizer, form=form):
            assert ex.emotion == "lonely"
    # the target is trained as written: the first answer still says "sad"
    first = build_examples([d], tokenizer)[0]
    target = tokenizer.decode(first.input_ids[first.loss_mask.astype(bool)].tolist())
    assert "<|emotion_begin|>sad<|emotion_end|>" in target
    prompts = build_examples([d], tokenizer, include_target=False)
    assert [p.emotion for p in prompts] == ["lonely", "lonely"]


def test_the_grpo_emotion_reward_scores_against_the_record_field(record, tokenizer):
    d = parse_record(_disagreeing(record))
    prompts = build_examples([d], tokenizer, include_target=False)
    reward = KardiaReward(None, RewardWeights(format=0.0, emotion=1.0, rubric=0.0))
    texts = [answer(emotion="lonely"), answer(emotion="sad")]  # both completions of turn 2
    out = score(reward, prompts, np.array([0, 0]), texts)
    np.testing.assert_array_equal(out.components["emotion"], [1.0, 0.0])


def test_emotion_disagreements_count_turns_and_name_the_first_locations():
    dialogues = [
        parse_record(_disagreeing(BASE_RECORD), location="a.jsonl:1"),  # 1 turn off
        parse_record(BASE_RECORD, location="a.jsonl:2"),  # agrees
        parse_record(_disagreeing(BASE_RECORD, "joyful"), location="a.jsonl:3"),  # 2 off
    ]
    out = emotion_disagreements(dialogues, shown=2)
    assert out["dialogues"] == 2 and out["turns"] == 3
    assert out["first"] == [
        "a.jsonl:1: messages[2] emotion span 'sad', field 'lonely'",
        "a.jsonl:3: messages[2] emotion span 'sad', field 'joyful'",
    ]
    assert emotion_disagreements(dialogues[1:2]) == {"dialogues": 0, "turns": 0, "first": []}


def test_validate_and_stats_report_disagreements_but_pass(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    rows = [BASE_RECORD, _disagreeing(BASE_RECORD), _disagreeing(BASE_RECORD, "proud")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "emotion spans disagreeing with the record's gold emotion field: 3 turn(s) in "
        "2 dialogue(s)" in out
    )
    assert f"  {path}:2: messages[2] emotion span 'sad', field 'lonely'" in out
    assert f"  {path}:3: messages[4] emotion span 'lonely', field 'proud'" in out
    assert out.rstrip().endswith("OK")
    assert main(["data", "stats", str(path), "--json", "--example", "dialogue"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["emotion_disagreements"]["turns"] == 3 and stats["examples"] == 3
    assert stats["example_form"] == "dialogue" and stats["emotion"] == {"lonely": 2, "proud": 1}
