"""The emotion reward: 1.0 iff the completion's emotion span, normalised, is the
gold label (the paper's exact match; case, whitespace and surrounding punctuation
are forgiven by `normalize_emotion`, synonyms and multiple labels are not).

By default the emotion span is read even when another span is malformed, so a
format slip is paid for once (by the format reward), not twice; `strict=True`
requires the whole answer to parse. An answer with two emotion spans gets 0: it
must not hedge by naming several labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kardia_jax.data.emotions import normalize_emotion
from kardia_jax.data.spans import BEGIN_RE_BY_NAME, SpanError, find_span, parse_spans
from kardia_jax.errors import DataError


def extract_emotion(text: str, *, strict: bool = False) -> str | None:
    """The raw text of the completion's single emotion span, or None."""
    if not isinstance(text, str):
        return None
    if strict:
        try:
            return parse_spans(text).emotion
        except SpanError:
            return None
    if len(BEGIN_RE_BY_NAME["emotion"].findall(text)) != 1:
        return None
    return find_span("emotion", text)


def predicted_emotions(texts: Sequence[str], *, strict: bool = False) -> list[str | None]:
    """The normalised label each completion predicts (None: no valid label)."""
    out = []
    for t in texts:
        raw = extract_emotion(t, strict=strict)
        out.append(normalize_emotion(raw) if raw is not None else None)
    return out


def emotion_reward(
    texts: Sequence[str], gold_labels: Sequence[str], *, strict: bool = False
) -> np.ndarray:
    """[N] float32: 1.0 where the predicted label equals the gold label."""
    if len(texts) != len(gold_labels):
        raise DataError(f"{len(texts)} completions but {len(gold_labels)} gold labels")
    gold = []
    for i, g in enumerate(gold_labels):
        label = normalize_emotion(g)
        if label is None:  # a data bug, not a policy mistake: never score it silently
            raise DataError(f"gold label {i} ({g!r}) is not one of the 32 emotions")
        gold.append(label)
    pred = predicted_emotions(texts, strict=strict)
    hits = [p is not None and p == g for p, g in zip(pred, gold, strict=True)]
    return np.asarray(hits, np.float32)
