"""Dialogues -> tokenised SFT examples, in one of two forms (`EXAMPLE_FORMS`):
  "turn": one example per assistant turn, prompt = system + dialogue so far, target =
    that assistant turn (ours; also the GRPO and evaluation prompts);
  "dialogue": the whole dialogue as one sequence with loss on every assistant turn
    (ms-swift's default for multi-turn data, the paper's trainer).
Both are tokenised with the Qwen2.5 chat template, with a loss mask on target tokens only.

Loss-mask convention (the trainer relies on it): the mask is aligned with the inputs.
loss_mask[t] = 1 means token t is a target token, predicted from position t - 1; the
targets are the assistant content and its closing <|im_end|> (so the model learns to
stop), not the `<|im_start|>assistant\\n` header nor the newline after <|im_end|>.

Over-long turn examples drop whole user/assistant pairs from the oldest end of the
history; the system prompt (profile + situation) and the latest user turn always stay.
An over-long dialogue example is cut after the last whole assistant turn that fits.

The gold emotion of every example is the record's `emotion` field (the dataset card's
gold label, EmpatheticDialogues' label of the situation), not the turn's emotion span.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from kardia_jax.data.schema import Dialogue, RecordError
from kardia_jax.data.spans import FourSpans
from kardia_jax.data.template import IM_START, render_turn
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
    # tokens before the first target token: input_ids[:prompt_length] ends with
    # "<|im_start|>assistant\n" (for a dialogue example, the first assistant header)
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


def _encode_segments(dialogue: Dialogue, tokenizer) -> list[tuple[list[int], np.ndarray]]:
    """Token ids per message plus, for assistant turns, the target mask.

    Each message is tokenised on its own: messages start with the special token
    <|im_start|>, which the tokenizer never merges across, so the concatenation equals
    tokenising the whole rendered chat (tests check this).
    """
    segs = [render_turn(m.role, m.content) for m in dialogue.messages]
    enc = tokenizer(segs, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for m, seg, ids, offsets in zip(
        dialogue.messages, segs, enc["input_ids"], enc["offset_mapping"], strict=True
    ):
        mask = np.zeros(len(ids), np.uint8)
        if m.role == "assistant":
            start = len(f"{IM_START}assistant\n")
            end = len(seg) - 1  # up to and including <|im_end|>, not the final "\n"
            a, b = np.asarray(offsets, np.int64).reshape(-1, 2).T
            if (((a < start) & (start < b)) | ((a < end) & (end < b))).any():
                raise DataError(
                    f"{dialogue.location}: a token straddles the target boundary; "
                    "the loss mask cannot be exact"
                )
            mask[(a >= start) & (b <= end)] = 1
        out.append((ids, mask))
    return out


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
    segs = _encode_segments(dialogue, tokenizer)
    sys_ids = segs[0][0]
    results: list[TokenizedExample | RecordError] = []
    for k in dialogue.assistant_turns:
        ids_k, mask_k = segs[k]
        header = int(np.argmax(mask_k))  # tokens of "<|im_start|>assistant\n"
        tail_ids, tail_mask = (ids_k, mask_k) if include_target else (ids_k[:header], None)
        user_ids = segs[k - 1][0]
        fixed = len(sys_ids) + len(user_ids) + len(tail_ids)
        if fixed > max_length:
            results.append(
                RecordError(
                    "too_long",
                    f"messages[{k}]",
                    f"example is {fixed} tokens even with all earlier turns dropped (system "
                    f"{len(sys_ids)} + user {len(user_ids)} + assistant {len(tail_ids)}) "
                    f"> max_length {max_length}",
                )
            )
            continue
        # history pairs (user, assistant) at message indices (1, 2), (3, 4), ..., (k-3, k-2)
        pair_lens = [len(segs[i][0]) + len(segs[i + 1][0]) for i in range(1, k - 1, 2)]
        drop = 0
        while fixed + sum(pair_lens[drop:]) > max_length:
            drop += 1
        keep = [segs[0][0], *(segs[i][0] for i in range(1 + 2 * drop, k)), tail_ids]
        input_ids = np.concatenate([np.asarray(x, np.int32) for x in keep])
        loss_mask = np.zeros(len(input_ids), np.uint8)
        if tail_mask is not None:
            loss_mask[-len(tail_mask) :] = tail_mask
        prompt_length = len(input_ids) - len(tail_ids) + header
        results.append(
            TokenizedExample(
                input_ids=input_ids,
                loss_mask=loss_mask,
                prompt_length=prompt_length,
                dropped_turns=drop,
                location=dialogue.location,
                turn=k,
                emotion=dialogue.emotion,
                dialogue=dialogue,
            )
        )
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
    segs = _encode_segments(dialogue, tokenizer)
    turns = dialogue.assistant_turns
    ends = np.cumsum([len(ids) for ids, _ in segs])  # ends[i]: tokens up to message i
    kept = [k for k in turns if ends[k] <= max_length]  # a prefix: ends only grow
    first = turns[0]
    if not kept:
        return RecordError(
            "too_long",
            f"messages[{first}]",
            f"the dialogue is {ends[first]} tokens up to its first assistant turn "
            f"> max_length {max_length}",
        )
    last = kept[-1]
    input_ids = np.concatenate([np.asarray(segs[i][0], np.int32) for i in range(last + 1)])
    loss_mask = np.concatenate([segs[i][1] for i in range(last + 1)])
    return TokenizedExample(
        input_ids=input_ids,
        loss_mask=loss_mask,
        prompt_length=int(ends[first - 1]) + int(np.argmax(segs[first][1])),
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
