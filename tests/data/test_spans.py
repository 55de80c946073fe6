"""The four-span parser: both notations parse to the same spans, every failure names its
reason, and the emotion normaliser maps noisy labels onto the 32 or flags them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kardia_jax.data.emotions import EMOTIONS, normalize_emotion
from kardia_jax.data.spans import (
    SPAN_MARKERS,
    SPAN_REASONS,
    FourSpans,
    SpanError,
    normalize_target,
    parse_spans,
    span_error,
)

U, R, E, S = "I hear you.", "Validate first.", "sad", "That sounds hard."
SPECIAL = (
    f"<|understanding_begin|>{U}<|understanding_end|><|reasoning_begin|>{R}<|reasoning_end|>"
    f"<|emotion_begin|>{E}<|emotion_end|><|response_begin|>{S}<|response_end|>"
)
TAGS = (
    f"<understanding>\n{U}\n</understanding>\n<reasoning>{R}</reasoning>\n"
    f"<emotion> {E} </emotion>\n<response>{S}</response>\n"
)


def test_both_notations_parse_to_the_same_spans():
    assert parse_spans(SPECIAL) == parse_spans(TAGS) == FourSpans(U, R, E, S)


def test_normalize_target_rewrites_notation():
    assert normalize_target(TAGS, "special", sep="") == SPECIAL
    assert parse_spans(normalize_target(SPECIAL, "tags")) == FourSpans(U, R, E, S)
    assert normalize_target(SPECIAL, "tags").startswith(
        "<understanding>I hear you.</understanding>\n"
    )


def test_markers_are_the_eight_special_tokens_in_order():
    assert SPAN_MARKERS[0] == "<|understanding_begin|>"
    assert SPAN_MARKERS[-1] == "<|response_end|>"
    assert len(set(SPAN_MARKERS)) == 8


def _drop(text: str, name: str) -> str:
    start = text.index(f"<|{name}_begin|>")
    end = text.index(f"<|{name}_end|>") + len(f"<|{name}_end|>")
    return text[:start] + text[end:]


BAD = [
    ("missing", _drop(SPECIAL, "emotion"), "emotion"),
    ("missing", "just a plain reply", "understanding"),
    ("out_of_order", SPECIAL.replace(f"<|emotion_begin|>{E}<|emotion_end|>", "")
     + f"<|emotion_begin|>{E}<|emotion_end|>", "emotion"),
    ("empty", SPECIAL.replace(f"<|reasoning_begin|>{R}", "<|reasoning_begin|>  \n"), "reasoning"),
    ("nested", SPECIAL.replace(f"{U}<|understanding_end|>", f"{U}<|reasoning_begin|>x"),
     "reasoning"),
    ("duplicated", SPECIAL + f"<|response_begin|>{S}<|response_end|>", "response"),
    ("text_outside", "Sure! " + SPECIAL, None),
    ("text_outside", SPECIAL + " Hope that helps.", None),
    ("text_outside", SPECIAL.replace("<|reasoning_begin|>", "and <|reasoning_begin|>"), None),
    ("unclosed", SPECIAL.replace("<|response_end|>", ""), "response"),
    ("unbalanced", SPECIAL.replace("<|understanding_begin|>", ""), "understanding"),
    ("mixed_notation",
     SPECIAL.replace("<|emotion_begin|>sad<|emotion_end|>", "<emotion>sad</emotion>"), "emotion"),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "text", "span"), BAD)
def test_each_failure_names_its_reason(reason, text, span):
    with pytest.raises(SpanError) as e:
        parse_spans(text)
    assert e.value.reason == reason
    assert e.value.span == span
    assert span_error(text).reason == reason


def test_every_reason_is_covered_and_valid_text_has_no_error():
    assert {r for r, _, _ in BAD} == set(SPAN_REASONS)
    assert span_error(SPECIAL) is None


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("sad", "sad"),
        (" Sad. ", "sad"),
        ("**LONELY**", "lonely"),
        ("'grateful'", "grateful"),
        ("Terrified!\n", "terrified"),
        ("very sad", None),
        ("melancholy", None),
        ("", None),
        ("sad, lonely", None),
    ],
)
def test_normalize_emotion(raw, label):
    assert normalize_emotion(raw) == label


def test_there_are_32_distinct_labels():
    assert len(EMOTIONS) == len(set(EMOTIONS)) == 32
    assert all(normalize_emotion(e.upper()) == e for e in EMOTIONS)


def test_span_parser_and_validation_import_without_heavy_dependencies():
    # The format reward runs next to the sampler; the parser must not drag in
    # transformers or grain (lazy names in kardia_jax.data keep it that way).
    code = (
        "import sys; from kardia_jax import data; data.parse_spans; data.load_dialogues;"
        "print(sorted(m for m in ('transformers', 'grain', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
