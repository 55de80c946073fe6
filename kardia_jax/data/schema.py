"""The KardiaBench record schema: one dialogue per record, checked field by field into a
`Dialogue`, or a `RecordError` that names the field and a reason from RECORD_REASONS.

A record has `person` (raw profile text), `mbti`, `emotion` (gold label), `situation`,
`anon_username` and `messages`: a system prompt, then user / assistant turns in
alternation, every assistant turn holding the four spans. Other fields (for example
reviewer-verdict rates) are kept in `Dialogue.extra`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from kardia_jax.data.emotions import normalize_emotion
from kardia_jax.data.spans import FourSpans, Notation, SpanError, parse_spans

# Why a record (or one of its examples) is rejected. Skip mode counts by these.
RECORD_REASONS: tuple[str, ...] = (
    "not_utf8",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "invalid_mbti",
    "unknown_emotion",
    "empty_messages",
    "bad_message",
    "unknown_role",
    "roles_out_of_order",
    "empty_content",
    "control_token",
    "no_assistant_turn",
    "bad_spans",
    "too_long",  # an example that cannot fit max_length even with history dropped
)

REQUIRED_FIELDS: tuple[tuple[str, type], ...] = (
    ("person", str),
    ("mbti", str),
    ("emotion", str),
    ("situation", str),
    ("anon_username", str),
    ("messages", list),
)
ROLES = ("system", "user", "assistant")
# The 16 types, optionally with the -A / -T identity suffix some forums add.
_MBTI = re.compile(r"^[EI][NS][FT][JP](-[AT])?$")
# Chat-control tokens inside content would let text impersonate turn boundaries once
# tokenised (the tokenizer never splits special tokens), so records carrying them fail.
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


class RecordError(Exception):
    """A record that fails the schema; `field` is a path like `messages[3].content`."""

    def __init__(self, reason: str, field: str | None, message: str):
        super().__init__(message)
        assert reason in RECORD_REASONS, reason
        self.reason = reason
        self.field = field
        self.message = message

    def describe(self, location: str) -> str:
        where = f"{location}: field {self.field}" if self.field else location
        return f"{where}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str  # assistant turns: re-written in the configured span notation
    spans: FourSpans | None = None  # parsed spans of an assistant turn (emotion normalised)


@dataclasses.dataclass(frozen=True)
class Dialogue:
    person: str
    mbti: str
    emotion: str  # one of the 32 labels, normalised
    situation: str
    anon_username: str
    messages: tuple[Message, ...]
    location: str = ""  # where the record was read ("train.jsonl:12")
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def profile_key(self) -> str:
        """Identifies the profile for profile-disjoint splits."""
        return self.anon_username or self.person

    @property
    def assistant_turns(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m.role == "assistant"]


def _check_message(i: int, m: Any, expected: str, notation: Notation, sep: str) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping):
        raise RecordError("bad_message", where, f"expected an object, got {type(m).__name__}")
    for key in ("role", "content"):
        if key not in m:
            raise RecordError("bad_message", f"{where}.{key}", "missing")
        if not isinstance(m[key], str):
            got = type(m[key]).__name__
            raise RecordError("bad_message", f"{where}.{key}", f"expected a string, got {got}")
    role, content = m["role"], m["content"]
    if role not in ROLES:
        raise RecordError("unknown_role", f"{where}.role", f"unknown role {role!r}")
    if role != expected:
        raise RecordError(
            "roles_out_of_order", f"{where}.role", f"expected role {expected!r}, got {role!r}"
        )
    found = sorted((content.find(t), t) for t in CONTROL_TOKENS if t in content)
    if found:
        tokens = ", ".join(t for _, t in found)
        raise RecordError("control_token", f"{where}.content", f"contains {tokens}")
    if role != "assistant":
        if not content.strip():
            raise RecordError("empty_content", f"{where}.content", f"empty {role} message")
        return Message(role, content)
    try:
        spans = parse_spans(content)
    except SpanError as e:
        raise RecordError("bad_spans", f"{where}.content", f"assistant turn: {e}") from None
    label = normalize_emotion(spans.emotion)
    if label is None:
        raise RecordError(
            "unknown_emotion", f"{where}.content", f"unknown emotion span {spans.emotion!r}"
        )
    spans = dataclasses.replace(spans, emotion=label)
    return Message(role, spans.format(notation, sep), spans)


def parse_record(
    obj: Any, *, notation: Notation = "special", sep: str = "\n", location: str = ""
) -> Dialogue:
    """Checks one raw record and returns it as a Dialogue (raises RecordError)."""
    if not isinstance(obj, Mapping):
        raise RecordError("not_object", None, f"expected a JSON object, got {type(obj).__name__}")
    for name, typ in REQUIRED_FIELDS:
        if name not in obj or obj[name] is None:
            raise RecordError("missing_field", name, "missing")
        if not isinstance(obj[name], typ):
            got = type(obj[name]).__name__
            raise RecordError("wrong_type", name, f"expected {typ.__name__}, got {got}")
    mbti = obj["mbti"].strip().upper()
    if not _MBTI.match(mbti):
        raise RecordError("invalid_mbti", "mbti", f"not an MBTI type: {obj['mbti']!r}")
    emotion = normalize_emotion(obj["emotion"])
    if emotion is None:
        raise RecordError("unknown_emotion", "emotion", f"unknown emotion {obj['emotion']!r}")
    raw = obj["messages"]
    if not raw:
        raise RecordError("empty_messages", "messages", "no messages")
    messages = []
    for i, m in enumerate(raw):
        # system first, then user / assistant alternating (a trailing user turn is fine:
        # it yields no example)
        expected = "system" if i == 0 else ("user" if i % 2 == 1 else "assistant")
        messages.append(_check_message(i, m, expected, notation, sep))
    if not any(m.role == "assistant" for m in messages):
        raise RecordError("no_assistant_turn", "messages", "no assistant turn")
    known = {name for name, _ in REQUIRED_FIELDS}
    return Dialogue(
        person=obj["person"],
        mbti=mbti,
        emotion=emotion,
        situation=obj["situation"],
        anon_username=obj["anon_username"],
        messages=tuple(messages),
        location=location,
        extra={k: v for k, v in obj.items() if k not in known},
    )
