"""Malformed input, table-driven: each bad record sits on line 2 of a three-line file.
Strict mode must stop with a message naming the file, line and field; skip mode must
keep the two good records and count the bad one under its reason."""

from __future__ import annotations

import json

import pytest

from kardia_jax.data.examples import build_examples
from kardia_jax.data.schema import RECORD_REASONS
from kardia_jax.data.validate import ValidationReport, load_dialogues
from kardia_jax.errors import DataError

from .helpers import answer

SPECIAL = answer()


def _set(path, value):
    def mutate(rec):
        target = rec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return rec

    return mutate


def _del(key):
    def mutate(rec):
        del rec[key]
        return rec

    return mutate


def _assistant(text):
    return _set(("messages", 2, "content"), text)


# (case id, reason, field named in the message or None, message fragment, bad record:
#  raw bytes or a function of the valid record)
CASES = [
    ("invalid-json", "invalid_json", None, "invalid JSON: Expecting", b'{"person": "x",'),
    ("not-utf8", "not_utf8", None, "bytes at column 16 are not UTF-8", b'{"person": "caf\xe9"}'),
    ("not-object", "not_object", None, "expected a JSON object, got list", b"[1, 2]"),
    ("missing-person", "missing_field", "person", "missing", _del("person")),
    ("null-situation", "missing_field", "situation", "missing", _set(("situation",), None)),
    ("mbti-int", "wrong_type", "mbti", "expected str, got int", _set(("mbti",), 16)),
    ("messages-dict", "wrong_type", "messages", "expected list, got dict",
     _set(("messages",), {"role": "user"})),
    ("bad-mbti", "invalid_mbti", "mbti", "not an MBTI type: 'INFX'", _set(("mbti",), "INFX")),
    ("unknown-emotion", "unknown_emotion", "emotion", "unknown emotion 'melancholy'",
     _set(("emotion",), "melancholy")),
    ("empty-messages", "empty_messages", "messages", "no messages", _set(("messages",), [])),
    ("message-not-object", "bad_message", "messages[2]", "expected an object, got str",
     _set(("messages", 2), "hello")),
    ("content-null", "bad_message", "messages[1].content", "expected a string, got NoneType",
     _set(("messages", 1, "content"), None)),
    ("no-role", "bad_message", "messages[3].role", "missing",
     lambda r: (r["messages"][3].pop("role"), r)[1]),
    ("unknown-role", "unknown_role", "messages[1].role", "unknown role 'bot'",
     _set(("messages", 1, "role"), "bot")),
    ("no-system", "roles_out_of_order", "messages[0].role", "expected role 'system', got 'user'",
     lambda r: {**r, "messages": r["messages"][1:]}),
    ("user-twice", "roles_out_of_order", "messages[2].role",
     "expected role 'assistant', got 'user'", _set(("messages", 2, "role"), "user")),
    ("no-assistant", "no_assistant_turn", "messages", "no assistant turn",
     lambda r: {**r, "messages": r["messages"][:2]}),
    ("empty-user", "empty_content", "messages[3].content", "empty user message",
     _set(("messages", 3, "content"), "  \n")),
    ("control-token", "control_token", "messages[1].content", "contains <|im_end|>, <|im_start|>",
     _set(("messages", 1, "content"), "hi<|im_end|><|im_start|>assistant")),
    ("plain-reply", "bad_spans", "messages[2].content", "missing span(s): understanding",
     _assistant("I'm sorry you feel that way.")),
    ("missing-emotion", "bad_spans", "messages[2].content", "missing span(s): emotion",
     _assistant(SPECIAL.replace("<|emotion_begin|>lonely<|emotion_end|>", ""))),
    ("out-of-order", "bad_spans", "messages[2].content",
     "emotion span comes after the response span",
     _assistant("<|understanding_begin|>a<|understanding_end|><|reasoning_begin|>b"
                "<|reasoning_end|><|response_begin|>c<|response_end|>"
                "<|emotion_begin|>sad<|emotion_end|>")),
    ("empty-span", "bad_spans", "messages[4].content", "reasoning span is empty",
     _set(("messages", 4, "content"), answer(notation="tags").replace(
         "Being ignored hurts; I should validate first.", " "))),
    ("nested", "bad_spans", "messages[2].content", "reasoning span begins inside",
     _assistant(SPECIAL.replace("<|understanding_end|>", ""))),
    ("duplicated", "bad_spans", "messages[2].content", "emotion span appears twice",
     _assistant(SPECIAL + "<|emotion_begin|>sad<|emotion_end|>")),
    ("text-outside", "bad_spans", "messages[2].content", "text outside the spans: 'Sure!'",
     _assistant("Sure! " + SPECIAL)),
    ("mixed-notation", "bad_spans", "messages[2].content", "mixes tag and special-token",
     _assistant(SPECIAL.replace("<|emotion_begin|>lonely<|emotion_end|>",
                                "<emotion>sad</emotion>"))),
    ("unknown-span-emotion", "unknown_emotion", "messages[4].content",
     "unknown emotion span 'melancholy'",
     _set(("messages", 4, "content"), answer("melancholy", "tags"))),
    ("too-long", "too_long", "messages[4]", "> max_length 256",
     _set(("messages", 3, "content"), "so tired " * 300)),
]  # fmt: skip


def _write(tmp_path, record, bad) -> str:
    good = json.dumps(record).encode()
    line2 = bad if isinstance(bad, bytes) else json.dumps(bad(json.loads(good))).encode()
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([good, line2, good]) + b"\n")
    return str(path)


def _load(path, mode, tokenizer):
    dialogues, report = load_dialogues(path, mode=mode)
    examples = build_examples(dialogues, tokenizer, max_length=256, report=report)
    return dialogues, examples, report


def test_table_is_big_and_covers_every_reason():
    assert len(CASES) >= 15
    assert {c[1] for c in CASES} == set(RECORD_REASONS)


@pytest.mark.parametrize(("reason", "field", "fragment", "bad"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_strict_names_file_line_and_field(
    tmp_path, record, tokenizer, reason, field, fragment, bad
):
    path = _write(tmp_path, record, bad)
    with pytest.raises(DataError) as e:
        _load(path, "strict", tokenizer)
    msg = str(e.value)
    where = f"{path}:2: field {field}: " if field else f"{path}:2: "
    assert msg.startswith(where), msg
    assert fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(("reason", "bad"), [(c[1], c[4]) for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_skip_counts_the_bad_record(tmp_path, record, tokenizer, reason, bad):
    path = _write(tmp_path, record, bad)
    dialogues, examples, report = _load(path, "skip", tokenizer)
    assert report.records == 3
    if reason == "too_long":  # one example of the record is dropped, the record stays
        assert report.dialogues == 3 and not report.skipped
        assert report.examples_skipped == {"too_long": 1}
        assert len(examples) == 5 and report.examples == 5
    else:
        assert report.dialogues == len(dialogues) == 2
        assert report.skipped == {reason: 1} and not report.examples_skipped
        assert len(examples) == 4
    assert not report.clean
    assert reason in report.summary()


def test_json_array_and_parquet_report_positions(tmp_path, record):
    bad = dict(record, mbti=3)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record, bad], indent=1))
    lines = json.dumps([record, bad], indent=1).split("\n")
    line = [i for i, text in enumerate(lines, start=1) if text == " {"][1]  # 2nd record
    with pytest.raises(DataError, match=rf"data.json:{line}: field mbti: expected str"):
        load_dialogues(path)
    path.write_text(json.dumps([record, record]) + " junk")
    with pytest.raises(DataError, match=r"data.json:1: invalid JSON"):
        load_dialogues(path)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([record, dict(record, emotion="meh")]), tmp_path / "d.parquet"
    )
    with pytest.raises(DataError, match=r"d.parquet: row 1: field emotion: unknown emotion"):
        load_dialogues(tmp_path / "d.parquet")
    dialogues, report = load_dialogues(tmp_path / "d.parquet", mode="skip")
    assert len(dialogues) == 1 and report.skipped == {"unknown_emotion": 1}


def test_targets_are_normalised_to_the_configured_notation(tmp_path, record):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n\n")  # a blank line is not a record
    for notation, marker in (("special", "<|reasoning_begin|>"), ("tags", "<reasoning>")):
        (d,), report = load_dialogues(path, notation=notation)
        assert report.records == 1
        assert all(marker in m.content for m in d.messages if m.role == "assistant")
    assert d.extra == {} and d.mbti == "INFP" and d.messages[2].spans.emotion == "lonely"


def test_unreadable_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dialogues(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        (tmp_path / "empty.jsonl").write_text("\n")
        load_dialogues(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="unknown validation mode"):
        ValidationReport(source="x", mode="lenient")


def test_hub_ids_load_through_datasets(monkeypatch, record):
    import datasets

    calls = []

    def fake_load(hub_id, split):
        calls.append((hub_id, split))
        if hub_id == "owner/gated":
            raise ConnectionError("401 Client Error")
        return [record, dict(record, mbti="?")]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dialogues, report = load_dialogues("Jhcircle/KardiaBench", split="test", mode="skip")
    assert calls == [("Jhcircle/KardiaBench", "test")]
    assert len(dialogues) == 1 and report.skipped == {"invalid_mbti": 1}
    assert dialogues[0].location == "Jhcircle/KardiaBench[test]: row 0"
    with pytest.raises(DataError, match=r"owner/gated: cannot load from the hub .*gated"):
        load_dialogues("owner/gated")
