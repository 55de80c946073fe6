"""What the API judge sends and reads: the chat messages of one (context, candidate)
request, built from the shipped rubric with the candidate as neutralised data between
its delimiters; the strict JSON reply's five integer scores; and the expected score
over "1".."5" from a reply's top logprobs (pure functions, no HTTP)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np

from kardia_jax.errors import ConfigError
from kardia_jax.rewards.prompt import (
    NO_HISTORY,
    TRUNCATED,
    JudgeContext,
    PromptLimits,
    shown_candidate,
)
from kardia_jax.rewards.rubric import DIMENSIONS, Rubric
from kardia_jax.rewards.sanitize import candidate_parts, neutralize

# PromptLimits count judge tokens; without a tokenizer, text is cut at ~4 characters a
# token (English averages), so the API judge sees about what a local judge sees.
CHARS_PER_TOKEN = 4
SCORE_DIGITS = ("1", "2", "3", "4", "5")
_FIELD = re.compile(r"\{(profile|situation|dialogue|candidate)\}")
_SPEAKERS = {"user": "Seeker", "assistant": "Supporter"}
JSON_INSTRUCTION = (
    "Reply format for this evaluation: instead of the five lines described above, reply "
    "with one JSON object and nothing else, with exactly these keys, each an integer from "
    "1 to 5:\n" + json.dumps({d: "<1-5>" for d in DIMENSIONS}).replace('"<1-5>"', "<1-5>")
)


class InvalidReply(ValueError):
    """A 200 reply without the five integer scores."""


# ---------------------------------------------------------------------- prompts
def _clip(text: str, max_tokens: int) -> tuple[str, bool]:
    """Data text neutralised (no markers or delimiters can be spelled) and cut."""
    text = neutralize(text or "").strip()
    limit = max_tokens * CHARS_PER_TOKEN
    return (text, False) if len(text) <= limit else (text[:limit].rstrip(), True)


def candidate_text(completion: str, show_reasoning: bool, limits: PromptLimits):
    """(what the judge is shown of a completion, empty, truncated): the same pieces
    as `PromptBuilder.candidate_ids`, cut by characters instead of tokens."""
    parts = candidate_parts(completion)
    text = shown_candidate(parts, show_reasoning)
    limit = limits.max_candidate_tokens * CHARS_PER_TOKEN
    truncated = len(text) > limit
    if truncated:
        text = text[: max(0, limit - len(TRUNCATED))].rstrip() + TRUNCATED
    return text, parts.is_empty, truncated


def render_messages(
    rubric: Rubric,
    context: JudgeContext,
    candidate: str,
    *,
    show_reasoning: bool = False,
    limits: PromptLimits | None = None,
) -> list[dict]:
    """The chat messages of one request: system = rubric + JSON reply format, user =
    the rubric's user section with the context and the (already neutralised)
    candidate between its delimiters. The oldest history turns are left out until
    the prompt fits `limits.max_prompt_tokens` (characters / CHARS_PER_TOKEN)."""
    limits = limits or PromptLimits()
    system = f"{rubric.system_text(show_reasoning)}\n\n{JSON_INSTRUCTION}"
    profile = _clip(context.profile, limits.max_profile_tokens)
    situation = _clip(context.situation, limits.max_situation_tokens)
    turns = [
        f"{_SPEAKERS.get(role, role)}: {_clip(text, limits.max_turn_tokens)[0]}"
        for role, text in context.history
    ]
    budget = limits.max_prompt_tokens * CHARS_PER_TOKEN
    for drop in range(len(turns) + 1):
        fields = {
            "profile": (profile[0] + (" ..." if profile[1] else "")) or "(unknown)",
            "situation": (situation[0] + (" ..." if situation[1] else "")) or "(unknown)",
            "dialogue": "\n".join(turns[drop:]) or NO_HISTORY,
            "candidate": candidate,
        }
        # One pass, so data that happens to contain "{situation}" is never substituted.
        user = _FIELD.sub(lambda m, f=fields: f[m.group(1)], rubric.user)
        if len(system) + len(user) <= budget:
            break
    else:
        raise ConfigError(
            f"judge prompt is {len(system) + len(user)} characters even without history, "
            f"over max_prompt_tokens={limits.max_prompt_tokens} x {CHARS_PER_TOKEN}"
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------- replies
def parse_reply(content) -> list[int]:
    """The five integer scores of a reply, in DIMENSIONS order, or InvalidReply."""
    if not isinstance(content, str):
        raise InvalidReply("no message content")
    try:
        obj = json.loads(content)
    except ValueError:
        raise InvalidReply("not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidReply("not a JSON object")
    out = []
    for d in DIMENSIONS:
        if d not in obj:
            raise InvalidReply(f"no {d!r}")
        v = obj[d]
        # bool is an int in Python; JSON true is not a score.
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
            # An integer is shown, anything else only by its type: server text could
            # hold anything, and this message goes into the cache file.
            shown = str(v) if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__
            raise InvalidReply(f"{d!r} is {shown}, not an integer in 1..5")
        out.append(v)
    return out


def _token_bytes(entry: dict) -> bytes | None:
    b = entry.get("bytes")
    if isinstance(b, list) and all(isinstance(x, int) and 0 <= x < 256 for x in b):
        return bytes(b)
    tok = entry.get("token")
    return tok.encode("utf-8") if isinstance(tok, str) else None


def expected_scores(content: str, logprobs, integers: Sequence[int]) -> tuple[list, list]:
    """(scores, source per dimension): the expected value over "1".."5" at the token
    holding each dimension's digit, renormalised over the digits among its top
    logprobs ("expected"); the integer where that token cannot be found ("integer").

    The tokens are matched to the reply by bytes (a token may hold part of a
    character), and only a token that is the digit itself (with leading whitespace
    at most) counts: "4," or ":4" would give alternatives of another shape."""
    scores, sources = [float(x) for x in integers], ["integer"] * len(integers)
    entries = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    if not isinstance(entries, list) or not entries or not isinstance(content, str):
        return scores, sources
    pieces = [_token_bytes(e) if isinstance(e, dict) else None for e in entries]
    raw = content.encode("utf-8")
    if any(p is None for p in pieces) or b"".join(pieces) != raw:
        return scores, sources
    starts = np.cumsum([0] + [len(p) for p in pieces])
    for j, d in enumerate(DIMENSIONS):
        # The last occurrence: json.loads keeps the last of duplicate keys.
        found = list(re.finditer(rf'"{d}"\s*:\s*([1-5])(?![0-9.eE])', content))
        if not found:
            continue
        offset = len(content[: found[-1].start(1)].encode("utf-8"))
        i = int(np.searchsorted(starts, offset, side="right")) - 1
        entry = entries[i]
        digit = pieces[i].strip()
        if digit.decode("utf-8", "replace") != str(integers[j]):
            continue
        mass = dict.fromkeys(SCORE_DIGITS, 0.0)
        for alt in entry.get("top_logprobs") or ():
            alt_bytes = _token_bytes(alt) if isinstance(alt, dict) else None
            lp = alt.get("logprob") if isinstance(alt, dict) else None
            key = alt_bytes.strip().decode("utf-8", "replace") if alt_bytes else ""
            if key in mass and isinstance(lp, int | float) and math.isfinite(lp):
                mass[key] += math.exp(lp)
        chosen = str(integers[j])
        if mass[chosen] == 0.0 and isinstance(entry.get("logprob"), int | float):
            mass[chosen] = math.exp(entry["logprob"])  # servers that omit the chosen token
        total = sum(mass.values())
        if total > 0:
            scores[j] = sum(int(k) * p for k, p in mass.items()) / total
            sources[j] = "expected"
    return scores, sources
