"""Candidate text is data, never instructions: what the judge is shown of a policy
completion, and how it is neutralised before it meets the judge's tokenizer.

`neutralize` makes any string safe to place inside the judge prompt: NFKC first (so
full-width look-alikes such as "＜|im_end|＞" fold to ASCII and are caught), control
characters dropped, every angle bracket replaced by a single guillemet (so no chat
token, span marker, tag or our own delimiter can be spelled), and any remaining
reserved string (an added token of the judge's tokenizer that has no angle bracket,
e.g. "[INST]") broken by a space after its first character.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterable

from kardia_jax.data.spans import BEGIN_RE_BY_NAME, MARKER_RE, SpanError, find_span, parse_spans

_BRACKETS = str.maketrans({"<": "\u2039", ">": "\u203a"})  # < > -> ‹ ›
_KEEP_CONTROL = frozenset("\n\t")
# Control, surrogate, private-use and unassigned code points: never meaningful in a
# reply, and a way to smuggle bytes past a reader. Format characters (Cf: zero-width
# joiners in emoji) are kept; they cannot spell a token once brackets are gone.
_DROP_CATEGORIES = frozenset(("Cc", "Cs", "Co", "Cn"))


def neutralize(text: str, reserved: Iterable[str] = ()) -> str:
    """`text` with nothing left that a tokenizer could read as a control token."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(
        c for c in text if c in _KEEP_CONTROL or unicodedata.category(c) not in _DROP_CATEGORIES
    )
    text = text.translate(_BRACKETS)
    # Breaking one reserved string cannot create another of the same length or
    # shorter at that spot, so this terminates; the bound is a guard, not a limit.
    reserved = [r for r in reserved if r and r.translate(_BRACKETS) == r]
    for _ in range(8):
        hits = [r for r in reserved if r in text]
        if not hits:
            break
        for r in hits:
            text = text.replace(r, f"{r[0]} {r[1:]}")
    return text


@dataclasses.dataclass(frozen=True)
class CandidateParts:
    """What of a completion the judge sees (raw, before `neutralize`)."""

    response: str
    understanding: str | None = None
    reasoning: str | None = None
    source: str = "spans"  # "spans" | "lenient" | "unclosed" | "whole_text" | "none"

    @property
    def is_empty(self) -> bool:
        return not self.response.strip()


def _span(name: str, text: str) -> str | None:
    body = find_span(name, text)
    return None if body is None else body.strip()


def candidate_parts(text: str) -> CandidateParts:
    """The response span of a completion (and its understanding / reasoning).

    A valid answer gives its spans. Otherwise, leniently: the first complete response
    span; else the text after an unclosed response marker; else, if the completion
    has no span markers at all, its whole text (a policy that ignores the format is
    still judged on what it said: the format reward already charges for the format);
    else nothing, which is scored as an empty reply.
    """
    if not isinstance(text, str):
        return CandidateParts("", source="none")
    try:
        s = parse_spans(text)
        return CandidateParts(s.response, s.understanding, s.reasoning, "spans")
    except SpanError:
        pass
    understanding, reasoning = _span("understanding", text), _span("reasoning", text)
    response = _span("response", text)
    if response is not None:
        return CandidateParts(response, understanding, reasoning, "lenient")
    begins = list(BEGIN_RE_BY_NAME["response"].finditer(text))
    if begins:
        tail = MARKER_RE.split(text[begins[-1].end() :])[0]
        return CandidateParts(tail.strip(), understanding, reasoning, "unclosed")
    if not MARKER_RE.search(text):
        return CandidateParts(text.strip(), source="whole_text")
    return CandidateParts("", understanding, reasoning, "none")
