"""Dialogues -> turn-level examples: one per assistant turn, prompt = system + dialogue so
far, target = that assistant turn, tokenised with the Qwen2.5 chat template and a loss
mask on the target tokens only.

Loss-mask convention (the trainer relies on it): the mask is aligned with the inputs.
loss_mask[t] = 1 means token t is a target token, predicted from position t - 1; the
targets are the assistant content and its closing <|im_end|> (so the model learns to
stop), not the `<|im_start|>assistant\\n` header nor the newline after <|im_end|>.

Over-long examples drop whole user/assistant pairs from the oldest end of the history;
the system prompt (profile + situation) and the latest user turn always stay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from kardia_jax.data.schema import Dialogue, RecordError
from kardia_jax.data.spans import FourSpans
from kardia_jax.data.template import IM_START, render_turn
from kardia_jax.data.validate import ValidationReport
from kardia_jax.errors import DataError

DEFAULT_MAX_LENGTH = 2048


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
        return self.spans.emotion


def turn_examples(dialogues: Iterable[Dialogue]) -> list[TurnExample]:
    return [TurnExample(d, k) for d in dialogues for k in d.assistant_turns]


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    input_ids: np.ndarray  # int32 [T]: chat-template tokens of prompt (+ target)
    loss_mask: np.ndarray  # uint8 [T]: 1 on target tokens (aligned with inputs)
    prompt_length: int  # input_ids[:prompt_length] ends with "<|im_start|>assistant\n"
    dropped_turns: int  # user/assistant pairs dropped from the oldest history to fit
    location: str  # the record's file:line
    turn: int  # message index of the target assistant turn
    emotion: str  # this turn's gold emotion label
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
        spans = dialogue.messages[k].spans
        results.append(
            TokenizedExample(
                input_ids=input_ids,
                loss_mask=loss_mask,
                prompt_length=prompt_length,
                dropped_turns=drop,
                location=dialogue.location,
                turn=k,
                emotion=spans.emotion,
                dialogue=dialogue,
            )
        )
    return results


def build_examples(
    dialogues: Sequence[Dialogue],
    tokenizer,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    include_target: bool = True,
    report: ValidationReport | None = None,
) -> list[TokenizedExample]:
    """Tokenises every assistant turn. An example that cannot fit raises DataError in
    strict mode (the report's mode; strict without a report) or is counted and skipped."""
    report = report or ValidationReport(source="", mode="strict")
    out = []
    for d in dialogues:
        for ex in encode_dialogue(
            d, tokenizer, max_length=max_length, include_target=include_target
        ):
            if isinstance(ex, RecordError):
                report.reject(ex.reason, ex.describe(d.location), example=True)
                continue
            report.examples += 1
            report.truncated += ex.dropped_turns > 0
            out.append(ex)
    return out
