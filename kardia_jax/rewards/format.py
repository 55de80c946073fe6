"""The format reward: 1.0 iff a completion is a valid four-span answer (all spans
present, in order, non-empty, nothing but whitespace outside them), judged by the
data stage's own parser so that training and validation agree on what "valid" is.

Optional partial credit (off in the paper) pays PARTIAL_PER_SPAN for each span that
is well formed on its own, so an invalid answer earns at most 0.8 < 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kardia_jax.data.spans import MARKER_RE, NOTATIONS, SPAN_NAMES, marker, span_error

PARTIAL_PER_SPAN = 0.2


def format_reasons(texts: Sequence[str]) -> list[str | None]:
    """Per text, why it is not a valid four-span answer (a `SPAN_REASONS` string),
    or None when it is."""
    out = []
    for t in texts:
        if not isinstance(t, str):  # e.g. None from a failed rollout
            out.append("missing")
            continue
        err = span_error(t)
        out.append(None if err is None else err.reason)
    return out


def well_formed_spans(text: str) -> int:
    """How many of the four spans are well formed on their own: exactly one begin and
    one end marker of that span (in one notation), in that order, with non-empty text
    and no other marker between them."""
    good = 0
    for name in SPAN_NAMES:
        for notation in NOTATIONS:
            begin, end = marker(name, "begin", notation), marker(name, "end", notation)
            if text.count(begin) != 1 or text.count(end) != 1:
                continue
            i, j = text.index(begin) + len(begin), text.index(end)
            body = text[i:j] if i <= j else None
            if body is not None and body.strip() and not MARKER_RE.search(body):
                good += 1
                break
    return good


def format_reward(texts: Sequence[str], *, partial_credit: bool = False) -> np.ndarray:
    """[N] float32: 1.0 for a valid four-span answer, else 0.0 (or, with
    `partial_credit`, PARTIAL_PER_SPAN per well-formed span)."""
    reasons = format_reasons(texts)
    out = np.zeros(len(texts), np.float32)
    for i, (t, r) in enumerate(zip(texts, reasons, strict=True)):
        if r is None:
            out[i] = 1.0
        elif partial_credit and isinstance(t, str):
            out[i] = PARTIAL_PER_SPAN * well_formed_spans(t)
    return out
