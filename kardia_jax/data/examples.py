"""Dialogues -> tokenised SFT examples, in one of two forms (`EXAMPLE_FORMS`):
  "turn": one example per assistant turn, prompt = system + dialogue so far, target =
    that assistant turn (ours; also the GRPO and evaluation prompts);
  "dialogue": the whole dialogue as one sequence with loss on every assistant turn
    (ms-swift's default for multi-turn data, the paper's trainer).
Both are tokenised with the tokenizer's own chat template (`apply_chat_template`), the
loss mask found by rendering the chat up to each message and taking the tokens that
each assistant message adds.

Loss-mask convention (the trainer relies on it): the mask is aligned with the inputs.
loss_mask[t] = 1 means token t is a target token, predicted from position t - 1; the
targets are the assistant content and the template's end-of-turn token after it (Qwen's
<|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>: so the model learns to stop),
not the assistant header that `add_generation_prompt=True` writes nor what follows the
end-of-turn token (Qwen's newline).

Over-long turn examples drop whole user/assistant pairs from the oldest end of the
history; the system prompt (profile + situation) and the latest user turn always stay.
An over-long dialogue example is cut after the last whole assistant turn that fits.

The gold emotion of every example is the record's `emotion` field (the dataset card's
gold label, EmpatheticDialogues' label of the situation), not the turn's emotion span.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from kardia_jax.data.schema import Dialogue, RecordError
from kardia_jax.data.spans import FourSpans
from kardia_jax.data.template import (
    ChatTemplateError,
    chat_template_name,
    end_of_turn_tokens,
    render,
)
from kardia_jax.data.validate import ValidationReport
from kardia_jax.errors import ConfigError, DataError

DEFAULT_MAX_LENGTH = 2048
EXAMPLE_FORMS = ("turn", "dialogue")


@dataclasses.dataclass(frozen=True)
class TurnExample:
    """One assistant turn of a dialogue, before tokenisation."""

    dialogue: Dialogue
    turn: int  # index of the assistant message in dialogue.messages

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.dialogue.messages[: self.turn]]

    @property
    def target(self) -> str:
        return self.dialogue.messages[self.turn].content

    @property
    def spans(self) -> FourSpans:
        return self.dialogue.messages[self.turn].spans

    @property
    def gold_emotion(self) -> str:
        """The record's gold label; the turn's own emotion span may differ (see
        stats.emotion_disagreements)."""
        return self.dialogue.emotion


def turn_examples(dialogues: Iterable[Dialogue]) -> list[TurnExample]:
    return [TurnExample(d, k) for d in dialogues for k in d.assistant_turns]


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    input_ids: np.ndarray  # int32 [T]: chat-template tokens of prompt (+ target)
    loss_mask: np.ndarray  # uint8 [T]: 1 on target tokens (aligned with inputs)
    # tokens before the first target token: input_ids[:prompt_length] is the chat
    # before the target rendered with add_generation_prompt=True (for a dialogue
    # example, the chat before its first assistant turn)
    prompt_length: int
    # user/assistant pairs dropped to fit max_length: turn form, from the oldest
    # history; dialogue form, from the end (the exchanges after the last turn kept)
    dropped_turns: int
    location: str  # the record's file:line
    turn: int  # message index of the target assistant turn (dialogue form: the last kept)
    emotion: str  # the record's gold emotion label (dialogue.emotion, normalised)
    # the source dialogue (persona, situation, reference turn) for judges and evaluation
    dialogue: Dialogue | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def prompt_ids(self) -> np.ndarray:
        return self.input_ids[: self.prompt_length]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass(frozen=True)
class _Rendered:
    """A conversation rendered prefix by prefix with the tokenizer's chat template.

    `ids` are the tokens of the whole conversation; the tokens of messages[: i + 1] are
    ids[: ends[i]] and those of messages[:k] plus the generation prompt are
    ids[: headers[k]] (checked, not assumed); `targets[k]` is the [start, stop) range
    of assistant message k's content and end-of-turn token.
    """

    ids: np.ndarray
    ends: list[int]
    headers: dict[int, int]
    targets: dict[int, tuple[int, int]]

    def mask(self, turns: Iterable[int], length: int) -> np.ndarray:
        mask = np.zeros(length, np.uint8)
        for k in turns:
            mask[slice(*self.targets[k])] = 1
        return mask


def _prefix_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """`tokenizer(text)` ids of each text, in linear rather than quadratic time when
    each text is a string prefix of the last: the last is tokenised whole and a prefix
    ending at b reuses its tokens up to the last added token before b (the tokenizer
    splits on added tokens before anything else), tokenising only the piece after it.
    A piece whose tokens differ from the whole text's falls back to tokenising the
    prefix alone, so the result is always exactly what the tokenizer gives."""
    try:
        whole = tokenizer(texts[-1], add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # no offsets (a Python tokenizer): one by one
        return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ids, offsets = list(whole["input_ids"]), [tuple(o) for o in whole["offset_mapping"]]
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    last_added = []  # last_added[t]: tokens up to and including the last added one < t
    n = 0
    for t, i in enumerate(ids):
        last_added.append(n)
        n = t + 1 if i in added else n
    last_added.append(n)
    ends = [e for _, e in offsets]
    ordered = all(a <= b for a, b in zip(ends, ends[1:], strict=False))
    plans, pieces = [], []
    for text in texts[:-1]:
        b = len(text)
        stop = bisect.bisect_right(ends, b) if ordered else sum(e <= b for e in ends)
        start = last_added[stop]
        if not texts[-1].startswith(text) or (stop < len(ids) and offsets[stop][0] < b):
            plans.append(None)  # not a prefix, or a token straddles b: tokenise alone
            pieces.append(text)
            continue
        plans.append((start, stop))
        pieces.append(text[offsets[start - 1][1] if start else 0 :])
    got_ids = tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
    out = []
    for text, plan, got in zip(texts[:-1], plans, got_ids, strict=True):
        if plan is None:
            out.append(list(got))
        elif list(got) == ids[plan[0] : plan[1]]:
            out.append(ids[: plan[1]])
        else:
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return [*out, ids]


def _render_prefixes(messages: Sequence[dict], tokenizer, location: str, eot: set[int]):
    """Tokens of every prefix of `messages`, and of the generation prompt before each
    assistant message, checked to extend one another; the loss mask comes from the
    tokens each assistant message adds. A template that rewrites earlier turns when
    the chat grows (drops past reasoning, moves the system prompt) is refused: the
    mask would be a guess."""
    template = chat_template_name(tokenizer)
    texts, kinds = [], []  # kinds: (message index, is the generation prompt)
    try:
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                texts.append(render(tokenizer, messages[:i], add_generation_prompt=True))
                kinds.append((i, True))
            texts.append(render(tokenizer, messages[: i + 1]))
            kinds.append((i, False))
    except ChatTemplateError as e:
        raise DataError(f"{location}: {e}") from None
    encoded = _prefix_ids(texts, tokenizer)
    ends: list[int] = []
    headers: dict[int, int] = {}
    targets: dict[int, tuple[int, int]] = {}
    prev: list[int] = []
    for (i, gen), ids in zip(kinds, encoded, strict=True):
        if ids[: len(prev)] != prev:
            if not gen and i in headers:  # the header's tail merged with the content
                raise DataError(
                    f"{location}: a token straddles the target boundary of messages[{i}] "
                    f"under {template} (its generation prompt is not a token prefix of the "
                    "answer); refusing to guess the loss mask"
                )
            raise DataError(
                f"{location}: {template} is not prefix-consistent at messages[{i}] (the "
                "chat so far is not a token prefix of the longer chat: the template "
                "rewrites earlier turns); refusing to guess the loss mask"
            )
        if gen:
            headers[i] = len(ids)
        else:
            ends.append(len(ids))
            if i in headers:
                added = ids[headers[i] :]
                stops = [j for j, t in enumerate(added) if t in eot]
                if not stops:
                    raise DataError(
                        f"{location}: {template} writes no end-of-turn token after "
                        f"messages[{i}]; the model could not learn to stop"
                    )
                targets[i] = (headers[i], headers[i] + stops[-1] + 1)
        prev = ids
    return _Rendered(np.asarray(prev, np.int32), ends, headers, targets)


def _end_of_turn_ids(tokenizer) -> set[int]:
    """Ids that close an assistant turn in training targets: the template's end-of-turn
    token, else the tokenizer's eos (templates that end turns with it)."""
    tokens = end_of_turn_tokens(tokenizer) or (tokenizer.eos_token,)
    return {tokenizer.convert_tokens_to_ids(t) for t in tokens if t}


def _messages(dialogue: Dialogue) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in dialogue.messages]


def encode_dialogue(
    dialogue: Dialogue,
    tokenizer,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    include_target: bool = True,
) -> list[TokenizedExample | RecordError]:
    """Tokenised examples of every assistant turn, or a RecordError('too_long') for a
    turn that exceeds `max_length` even with all earlier turns dropped.

    With include_target=False the examples are generation prompts (ending with the
    assistant header, for sampling in GRPO) and `max_length` bounds the prompt alone.
    """
    eot = _end_of_turn_ids(tokenizer)
    msgs = _messages(dialogue)
    full = _render_prefixes(msgs, tokenizer, dialogue.location, eot)
    results: list[TokenizedExample | RecordError] = []

    def example(r: _Rendered, k: int, drop: int) -> TokenizedExample:
        stop = r.ends[k] if include_target else r.headers[k]
        input_ids = r.ids[:stop]
        loss_mask = r.mask([k] if include_target else [], stop)
        return TokenizedExample(
            input_ids=input_ids,
            loss_mask=loss_mask,
            prompt_length=r.headers[k],
            dropped_turns=drop,
            location=dialogue.location,
            turn=k + 2 * drop,
            emotion=dialogue.emotion,
            dialogue=dialogue,
        )

    def length(r: _Rendered, k: int) -> int:
        return r.ends[k] if include_target else r.headers[k]

    seg = np.diff([0, *full.ends])  # tokens each message adds
    for k in dialogue.assistant_turns:
        if length(full, k) <= max_length:
            results.append(example(full, k, 0))
            continue
        # history pairs (user, assistant) at message indices (1, 2), ..., (k-3, k-2);
        # their token counts guess how many to drop, each guess rendered and measured
        # (a template may render a shortened chat differently, e.g. fold the system in)
        pair_lens = [int(seg[i] + seg[i + 1]) for i in range(1, k - 1, 2)]
        drop = 1
        while drop < len(pair_lens) and length(full, k) - sum(pair_lens[:drop]) > max_length:
            drop += 1
        while True:
            drop = min(drop, len(pair_lens))
            short = [msgs[0], *msgs[1 + 2 * drop : k + 1]]
            r = _render_prefixes(short, tokenizer, dialogue.location, eot)
            last = len(short) - 1
            if length(r, last) <= max_length:
                results.append(example(r, last, drop))
                break
            if drop == len(pair_lens):
                n_sys, n_user = r.ends[0], r.ends[1] - r.ends[0]
                results.append(
                    RecordError(
                        "too_long",
                        f"messages[{k}]",
                        f"example is {length(r, last)} tokens even with all earlier turns "
                        f"dropped (system {n_sys} + user {n_user} + assistant "
                        f"{length(r, last) - r.ends[1]}) > max_length {max_length}",
                    )
                )
                break
            drop += 1
    return results


def encode_whole_dialogue(
    dialogue: Dialogue, tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH
) -> TokenizedExample | RecordError:
    """The dialogue form: the chat up to its last assistant turn as one sequence, the
    loss mask the union of every assistant turn's target mask (a trailing user turn has
    no target and is left out).

    A dialogue over `max_length` is cut after the last whole assistant turn that fits,
    never inside a turn; one whose first assistant turn does not fit is a
    RecordError('too_long').
    """
    r = _render_prefixes(
        _messages(dialogue), tokenizer, dialogue.location, _end_of_turn_ids(tokenizer)
    )
    turns = dialogue.assistant_turns
    kept = [k for k in turns if r.ends[k] <= max_length]  # a prefix: ends only grow
    first = turns[0]
    if not kept:
        return RecordError(
            "too_long",
            f"messages[{first}]",
            f"the dialogue is {r.ends[first]} tokens up to its first assistant turn "
            f"> max_length {max_length}",
        )
    last = kept[-1]
    return TokenizedExample(
        input_ids=r.ids[: r.ends[last]],
        loss_mask=r.mask(kept, r.ends[last]),
        prompt_length=r.headers[first],
        dropped_turns=len(turns) - len(kept),
        location=dialogue.location,
        turn=last,
        emotion=dialogue.emotion,
        dialogue=dialogue,
    )


def build_examples(
    dialogues: Sequence[Dialogue],
    tokenizer,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    include_target: bool = True,
    report: ValidationReport | None = None,
    form: str = "turn",
) -> list[TokenizedExample]:
    """Tokenised examples in `form` (one of EXAMPLE_FORMS: an example per assistant
    turn, or per dialogue). An example that cannot fit raises DataError in strict mode
    (the report's mode; strict without a report) or is counted and skipped."""
    if form not in EXAMPLE_FORMS:
        raise ConfigError(f"data.example={form!r}: expected one of {EXAMPLE_FORMS}")
    if form == "dialogue" and not include_target:
        raise ConfigError(
            "data.example='dialogue' is a training form; generation prompts are per turn"
        )
    report = report or ValidationReport(source="", mode="strict")
    out = []
    for d in dialogues:
        if form == "dialogue":
            encoded = [encode_whole_dialogue(d, tokenizer, max_length=max_length)]
        else:
            encoded = encode_dialogue(
                d, tokenizer, max_length=max_length, include_target=include_target
            )
        for ex in encoded:
            if isinstance(ex, RecordError):
                report.reject(ex.reason, ex.describe(d.location), example=True)
                continue
            report.examples += 1
            report.truncated += ex.dropped_turns > 0
            out.append(ex)
    return out
