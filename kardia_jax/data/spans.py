"""The four-span answer format (understanding, reasoning, emotion, response): a parser
that returns the spans or the exact reason it cannot, and a formatter that writes them
in one configured notation. The format reward reuses `parse_spans` unchanged.

Two notations are accepted on input and may be chosen for output:
  "special": <|understanding_begin|> ... <|understanding_end|>   (released model's tokens)
  "tags":    <understanding> ... </understanding>                 (dataset card)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

Notation = Literal["special", "tags"]
NOTATIONS: tuple[str, ...] = ("special", "tags")
SPAN_NAMES: tuple[str, ...] = ("understanding", "reasoning", "emotion", "response")

# The eight marker strings of the special notation, in answer order; the tokenizer adds
# them as special tokens, one id each.
SPAN_MARKERS: tuple[str, ...] = tuple(
    f"<|{name}_{edge}|>" for name in SPAN_NAMES for edge in ("begin", "end")
)

# Why a text is not a valid four-span answer. Stable strings: validation counts by them
# and the format reward may log them.
SPAN_REASONS: tuple[str, ...] = (
    "missing",  # a span never opens
    "out_of_order",  # e.g. emotion after response
    "empty",  # only whitespace between begin and end
    "nested",  # a span begins while another is open
    "duplicated",  # a span opens twice
    "text_outside",  # non-whitespace text before, between or after the spans
    "unclosed",  # a begin marker without its end
    "unbalanced",  # an end marker that closes nothing (or another span)
    "mixed_notation",  # special-token markers and tags in one answer
)

# The span-marker patterns, one home for every reader of spans (the parser below, the
# format and emotion rewards, the judge's candidate extraction, the sampler's display).
_NAMES_RE = "|".join(SPAN_NAMES)
# Any begin or end marker of the four spans, either notation.
MARKER_RE = re.compile(
    rf"<\|(?P<sname>{_NAMES_RE})_(?P<sedge>begin|end)\|>|<(?P<slash>/?)(?P<tname>{_NAMES_RE})>"
)


def _complete_span_re(names: str) -> re.Pattern:
    return re.compile(
        rf"(?:<\|(?P<a>{names})_begin\|>(?P<x>.*?)<\|(?P=a)_end\|>)"
        rf"|(?:<(?P<b>{names})>(?P<y>.*?)</(?P=b)>)",
        re.S,
    )


# A complete span (begin, body, matching end; either notation) of any name, and per name.
SPAN_RE = _complete_span_re(_NAMES_RE)
SPAN_RE_BY_NAME: dict[str, re.Pattern] = {n: _complete_span_re(n) for n in SPAN_NAMES}
# The begin marker of one span, either notation.
BEGIN_RE_BY_NAME: dict[str, re.Pattern] = {
    n: re.compile(rf"<\|{n}_begin\|>|<{n}>") for n in SPAN_NAMES
}


def span_match(m: re.Match) -> tuple[str, str]:
    """(name, raw body) of a `SPAN_RE` / `SPAN_RE_BY_NAME` match."""
    return (m.group("a"), m.group("x")) if m.group("a") else (m.group("b"), m.group("y"))


def find_span(name: str, text: str) -> str | None:
    """The raw body of the first complete `name` span in `text`, or None (lenient: no
    check of the rest of the text; `parse_spans` is the strict reader)."""
    m = SPAN_RE_BY_NAME[name].search(text)
    return None if m is None else span_match(m)[1]


def marker(name: str, edge: Literal["begin", "end"], notation: Notation) -> str:
    if notation == "special":
        return f"<|{name}_{edge}|>"
    if notation == "tags":
        return f"<{'/' if edge == 'end' else ''}{name}>"
    raise ValueError(f"unknown span notation {notation!r}; expected one of {NOTATIONS}")


class SpanError(ValueError):
    """A text that is not a valid four-span answer; `reason` is one of SPAN_REASONS."""

    def __init__(self, reason: str, message: str, span: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.span = span


@dataclasses.dataclass(frozen=True)
class FourSpans:
    understanding: str
    reasoning: str
    emotion: str
    response: str

    def format(self, notation: Notation = "special", sep: str = "\n") -> str:
        """Writes the spans in `notation`; `sep` goes between spans (never inside)."""
        parts = [
            f"{marker(n, 'begin', notation)}{getattr(self, n)}{marker(n, 'end', notation)}"
            for n in SPAN_NAMES
        ]
        return sep.join(parts)


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_spans(text: str) -> FourSpans:
    """Parses a four-span answer, raising SpanError naming the first problem found.

    Whitespace between spans is allowed and span contents are stripped; anything else
    outside the spans is an error, because the format reward must not pay for it.
    """
    contents: dict[str, str] = {}
    open_name: str | None = None
    open_at = 0
    notation: str | None = None
    pos = 0
    for m in MARKER_RE.finditer(text):
        if m.group("sname"):
            name, is_begin, this_notation = m.group("sname"), m.group("sedge") == "begin", "special"
        else:
            name, is_begin, this_notation = m.group("tname"), not m.group("slash"), "tags"
        if notation is None:
            notation = this_notation
        elif notation != this_notation:
            raise SpanError(
                "mixed_notation",
                f"{m.group(0)} mixes tag and special-token notations in one answer",
                name,
            )
        if not is_begin and open_name != name:
            where = f"while {open_name} is open" if open_name else "with no span open"
            raise SpanError("unbalanced", f"{m.group(0)} appears {where}", name)
        if open_name is None and text[pos : m.start()].strip():
            raise SpanError(
                "text_outside", f"text outside the spans: {_snippet(text[pos : m.start()])}"
            )
        if is_begin:
            if open_name is not None:
                raise SpanError("nested", f"{name} span begins inside the {open_name} span", name)
            if name in contents:
                raise SpanError("duplicated", f"{name} span appears twice", name)
            later = [n for n in contents if SPAN_NAMES.index(n) > SPAN_NAMES.index(name)]
            if later:
                raise SpanError(
                    "out_of_order", f"{name} span comes after the {later[0]} span", name
                )
            open_name, open_at = name, m.end()
        else:
            body = text[open_at : m.start()].strip()
            if not body:
                raise SpanError("empty", f"{name} span is empty", name)
            contents[name] = body
            open_name = None
        pos = m.end()
    if open_name is not None:
        raise SpanError("unclosed", f"{open_name} span is never closed", open_name)
    if notation is not None and text[pos:].strip():  # (a text without markers is "missing")
        raise SpanError("text_outside", f"text outside the spans: {_snippet(text[pos:])}")
    missing = [n for n in SPAN_NAMES if n not in contents]
    if missing:
        raise SpanError("missing", f"missing span(s): {', '.join(missing)}", missing[0])
    return FourSpans(**contents)


def span_error(text: str) -> SpanError | None:
    """The reason `text` is not a valid four-span answer, or None when it is."""
    try:
        parse_spans(text)
    except SpanError as e:
        return e
    return None


def normalize_target(text: str, notation: Notation = "special", sep: str = "\n") -> str:
    """Re-writes a valid four-span answer in `notation` (raises SpanError otherwise)."""
    return parse_spans(text).format(notation, sep)
