"""Judge prompts as token ids: the shared prefix (rubric, context, candidate) and the
five dimension suffixes whose next token is the score.

The prompt is rendered with the judge tokenizer's own chat template (system =
rubric, user = context + candidate, then the judge's turn), then tokenised in four
pieces: the head (everything before the user's content: the same tokens for every
prompt of a builder, so the judge computes it once per batch), the context, the
candidate, and the tail. The candidate piece is neutralised and tokenised with
special tokens split, so whatever a candidate writes, the tokens outside its region
are those of any other candidate with the same context, and no added-token id
appears inside it (tests check both).
"""

from __future__ import annotations

import dataclasses
import re

from kardia_jax.data.template import ChatTemplateError, render, tokenizer_name
from kardia_jax.errors import ConfigError, KardiaError
from kardia_jax.rewards.rubric import Rubric
from kardia_jax.rewards.sanitize import CandidateParts, candidate_parts, neutralize

_SENTINEL = "\x00candidate\x00"  # control chars: `neutralize` removes them from all data
_USER_START = "\x00user\x00"
_FIELD = re.compile(r"\{(profile|situation|dialogue|candidate)\}")
_SPEAKERS = {"user": "Seeker", "assistant": "Supporter"}
EMPTY_REPLY = "(no reply)"
TRUNCATED = "\n[... cut off]"
NO_HISTORY = "(none: this is the first turn)"
SCORE_TOKENS = ("1", "2", "3", "4", "5")
_CONTEXT_CACHE = 4096  # rendered contexts kept (a GRPO step has far fewer prompts)


@dataclasses.dataclass(frozen=True)
class JudgeContext:
    """What the judge knows about the conversation a candidate answers."""

    profile: str
    situation: str
    history: tuple[tuple[str, str], ...] = ()  # (role "user" | "assistant", text), oldest first

    @classmethod
    def from_dialogue(cls, dialogue, turn: int) -> JudgeContext:
        """The context of assistant turn `turn` of a `data.Dialogue`: earlier assistant
        turns are shown as their response span (what the seeker actually read)."""
        history = []
        for m in dialogue.messages[1:turn]:
            text = m.spans.response if m.spans is not None else m.content
            history.append((m.role, text))
        return cls(dialogue.person, dialogue.situation, tuple(history))

    @classmethod
    def from_example(cls, example) -> JudgeContext:
        """From a `data.TokenizedExample` (which keeps its dialogue and turn)."""
        if example.dialogue is None:
            raise KardiaError("example has no dialogue attached; cannot build the judge context")
        return cls.from_dialogue(example.dialogue, example.turn)


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One candidate's prefix; the dimension suffixes are the builder's (shared)."""

    prefix_ids: tuple[int, ...]
    candidate_start: int  # the candidate region is prefix_ids[start:stop]
    candidate_stop: int
    empty: bool  # nothing to judge (empty / whitespace-only / no response span)
    truncated: bool  # candidate cut to max_candidate_tokens
    history_dropped: int  # oldest history turns left out to fit max_prompt_tokens
    source: str  # how the response was found, see `CandidateParts.source`


@dataclasses.dataclass(frozen=True)
class PromptLimits:
    max_candidate_tokens: int = 512  # the paper's responses average 27 tokens
    max_profile_tokens: int = 384
    max_situation_tokens: int = 160
    max_turn_tokens: int = 256  # per history turn
    max_prompt_tokens: int = 4096  # prefix + longest suffix: the largest length bucket


def shown_candidate(parts: CandidateParts, show_reasoning: bool, reserved=()) -> str:
    """What a judge is shown of a completion, neutralised: the response, or with
    `show_reasoning` the understanding and reasoning spans too (labelled)."""
    clean = lambda s: neutralize(s or "", reserved).strip()
    response = clean(parts.response) or EMPTY_REPLY
    if not show_reasoning:
        return response
    return (
        f"[understanding]\n{clean(parts.understanding) or '(missing)'}\n\n"
        f"[reasoning]\n{clean(parts.reasoning) or '(missing)'}\n\n"
        f"[response]\n{response}"
    )


class PromptBuilder:
    """Builds `JudgePrompt`s for one tokenizer and rubric."""

    def __init__(
        self,
        tokenizer,
        rubric: Rubric,
        *,
        show_reasoning: bool = False,
        limits: PromptLimits = PromptLimits(),
        chat_template_kwargs: dict | None = None,
    ):
        self.tokenizer, self.rubric, self.limits = tokenizer, rubric, limits
        self.show_reasoning = show_reasoning
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # Every added token (special or not, e.g. Qwen's "<tool_call>") is forbidden in
        # data: its text is reserved for `neutralize`, its id checked after tokenising.
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.reserved = tuple(sorted({t.content for t in added.values()}))
        self.forbidden_ids = frozenset(added) | frozenset(tokenizer.all_special_ids)
        self.suffix_ids, self.score_ids = _score_suffixes(tokenizer, rubric)
        self._truncated_ids = self._encode(TRUNCATED)
        # The tokens before the user's content (chat template + rubric): the same for
        # every prompt of this builder, so the judge runs them once per batch.
        self._head_text = self._render(JudgeContext("", ""), 0)[0]
        self.head_ids: tuple[int, ...] = tuple(self._encode(self._head_text))
        self._contexts: dict = {}

    # ---------------------------------------------------------------- tokens
    def _encode(self, text: str, split_special: bool = False) -> list[int]:
        kw = {"split_special_tokens": True} if split_special else {}
        return list(self.tokenizer(text, add_special_tokens=False, **kw)["input_ids"])

    def _clip(self, text: str, max_tokens: int) -> str:
        """Data text neutralised and cut to `max_tokens` (context fields)."""
        text = neutralize(text, self.reserved).strip()
        ids = self._encode(text, split_special=True)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens]).strip() + " ..."

    def candidate_ids(self, parts: CandidateParts) -> tuple[list[int], bool]:
        """The candidate region's tokens and whether they were truncated."""
        text = shown_candidate(parts, self.show_reasoning, self.reserved)
        ids = self._encode(text, split_special=True)
        bad = sorted(set(ids) & self.forbidden_ids)
        if bad:  # neutralize() makes this impossible for every tokenizer we know
            raise KardiaError(f"candidate tokenised to reserved token id(s) {bad}")
        limit = self.limits.max_candidate_tokens
        if len(ids) > limit:
            return ids[: max(0, limit - len(self._truncated_ids))] + self._truncated_ids, True
        return ids, False

    # ---------------------------------------------------------------- prompts
    def _render(self, context: JudgeContext, drop: int) -> tuple[str, str, str]:
        """(head, context text before the candidate, text after it) of the prompt."""
        lim = self.limits
        turns = [
            f"{_SPEAKERS.get(role, role)}: {self._clip(text, lim.max_turn_tokens)}"
            for role, text in context.history[drop:]
        ]
        fields = {
            "profile": self._clip(context.profile, lim.max_profile_tokens) or "(unknown)",
            "situation": self._clip(context.situation, lim.max_situation_tokens) or "(unknown)",
            "dialogue": "\n".join(turns) or NO_HISTORY,
            "candidate": _SENTINEL,
        }
        # One pass, so data that happens to contain "{situation}" is never substituted.
        user = _FIELD.sub(lambda m: fields[m.group(1)], self.rubric.user)
        system = self.rubric.system_text(self.show_reasoning)
        text = self._chat(system, _USER_START + user)
        head, sep1, text = text.partition(_USER_START)
        before, sep2, after = text.partition(_SENTINEL)
        if not (sep1 and sep2) or _SENTINEL in after or _USER_START in text:
            raise ConfigError("the judge's chat template dropped or repeated a prompt part")
        return head, before, after

    def _chat(self, system: str, user: str) -> str:
        """The rubric as the system turn and the context as the user turn, through the
        judge's own template. A template that refuses them (Gemma's has no system role)
        is a one-line error, not a prompt quietly rewritten into another shape."""
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return render(
                self.tokenizer, msgs, add_generation_prompt=True, **self.chat_template_kwargs
            )
        except ChatTemplateError as e:
            raise ConfigError(
                f"{tokenizer_name(self.tokenizer)}: the judge's chat template cannot render "
                f"a system + user prompt: {e.reason}"
            ) from None

    def context_ids(self, context: JudgeContext, drop: int) -> tuple[list[int], list[int]]:
        """(head + context tokens before the candidate, tokens after it), cached: a
        GRPO group's G completions share one context, rendered and tokenised once."""
        key = (context, drop)
        if key not in self._contexts:
            if len(self._contexts) >= _CONTEXT_CACHE:
                self._contexts.clear()
            head_text, before, after = self._render(context, drop)
            if head_text != self._head_text:
                raise ConfigError("the judge's chat template renders the system turn per prompt")
            self._contexts[key] = (list(self.head_ids) + self._encode(before), self._encode(after))
        return self._contexts[key]

    def build(self, context: JudgeContext, completion: str) -> JudgePrompt:
        parts = candidate_parts(completion)
        cand, truncated = self.candidate_ids(parts)
        longest_suffix = max(map(len, self.suffix_ids))
        for drop in range(len(context.history) + 1):
            head, tail = self.context_ids(context, drop)
            if len(head) + len(cand) + len(tail) + longest_suffix <= self.limits.max_prompt_tokens:
                return JudgePrompt(
                    prefix_ids=tuple(head + cand + tail),
                    candidate_start=len(head),
                    candidate_stop=len(head) + len(cand),
                    empty=parts.is_empty,
                    truncated=truncated,
                    history_dropped=drop,
                    source=parts.source,
                )
        raise ConfigError(
            f"judge prompt is {len(head) + len(cand) + len(tail) + longest_suffix} tokens even "
            f"without history, over max_prompt_tokens={self.limits.max_prompt_tokens}"
        )


def _score_suffixes(tokenizer, rubric: Rubric) -> tuple[list[list[int]], list[int]]:
    """Token ids of the five dimension suffixes and of the score tokens "1".."5".

    The score must be the single token that follows the suffix in the tokenizer's own
    segmentation of "Relevance: 4": Qwen splits it as ":", " ", "4", Llama-2-style
    tokenizers as ":", " 4". Both forms are tried; the first where every digit is one
    token after an unchanged suffix, the same token for every dimension, wins.
    """
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"])
    for suffix_end, digit_lead in ((" ", ""), ("", " ")):
        suffixes, score_ids = [], None
        for d in range(len(rubric.names)):
            text = rubric.score_prefix(d) + suffix_end
            base = enc(text)
            ids = []
            for digit in SCORE_TOKENS:
                full = enc(text + digit_lead + digit)
                if len(full) != len(base) + 1 or full[: len(base)] != base:
                    break
                ids.append(full[-1])
            if len(ids) != len(SCORE_TOKENS) or (score_ids is not None and ids != score_ids):
                break
            suffixes.append(base)
            score_ids = ids
        if len(suffixes) == len(rubric.names) and len(set(score_ids)) == len(SCORE_TOKENS):
            return suffixes, score_ids
    raise ConfigError(
        f"the judge tokenizer has no single score token after {rubric.score_prefix(0)!r}"
    )
