"""Shared test data: a valid four-span answer and a small valid KardiaBench record."""

from __future__ import annotations

from kardia_jax.data.spans import FourSpans


def answer(emotion: str = "lonely", notation: str = "special", sep: str = "") -> str:
    spans = FourSpans(
        "The user feels left out by their friends.",
        "Being ignored hurts; I should validate first.",
        emotion,
        "That sounds really painful. Do you want to tell me more?",
    )
    return spans.format(notation, sep)


BASE_RECORD = {
    "person": "MBTI: INFP\nAbout: 22, student.\nSignature: hi\nRecent Activities:\n- posted",
    "mbti": "INFP",
    "emotion": "lonely",
    "situation": "My friends went out without me.",
    "anon_username": "anon_test01",
    "messages": [
        {"role": "system", "content": "You are a supportive assistant. Profile: ..."},
        {"role": "user", "content": "My friends went out without me again."},
        {"role": "assistant", "content": answer()},
        {"role": "user", "content": "I just feel invisible."},
        {"role": "assistant", "content": answer(notation="tags", sep="\n")},
    ],
}
