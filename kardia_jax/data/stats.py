"""Dataset statistics for `kardia-jax data validate` / `data stats`: counts, profile /
MBTI / emotion histograms, token-length percentiles of the examples, and the records
whose gold `emotion` field disagrees with their turns' emotion spans."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from kardia_jax.data.emotions import EMOTIONS
from kardia_jax.data.examples import TokenizedExample
from kardia_jax.data.schema import Dialogue

PERCENTILES = (50, 90, 99, 100)
DISAGREEMENTS_SHOWN = 5  # locations listed by name; the rest are only counted


def emotion_disagreements(dialogues: Sequence[Dialogue], shown: int = DISAGREEMENTS_SHOWN) -> dict:
    """Assistant turns whose emotion span differs from the record's `emotion` field.

    The gold label is the field (the dataset card's; the examples' `emotion`), so a
    disagreement is reported, never an error: the turn is still trained as written.
    Returns {"dialogues": n, "turns": n, "first": ["FILE:LINE: messages[k] ...", ...]}.
    """
    n_dialogues = n_turns = 0
    first: list[str] = []
    for d in dialogues:
        bad = [k for k in d.assistant_turns if d.messages[k].spans.emotion != d.emotion]
        n_dialogues += bool(bad)
        n_turns += len(bad)
        for k in bad[: max(0, shown - len(first))]:
            span = d.messages[k].spans.emotion
            first.append(f"{d.location}: messages[{k}] emotion span {span!r}, field {d.emotion!r}")
    return {"dialogues": n_dialogues, "turns": n_turns, "first": first}


def dataset_stats(
    dialogues: Sequence[Dialogue], examples: Sequence[TokenizedExample], form: str = "turn"
) -> dict:
    total = np.array([len(e) for e in examples] or [0])
    prompt = np.array([e.prompt_length for e in examples] or [0])
    target = np.array([int(e.loss_mask.sum()) for e in examples] or [0])
    exchanges = np.array([len(d.assistant_turns) for d in dialogues] or [0])
    pct = lambda a: {f"p{p}": int(np.percentile(a, p)) for p in PERCENTILES}
    return {
        "dialogues": len(dialogues),
        "examples": len(examples),
        "example_form": form,
        "profiles": len({d.profile_key for d in dialogues}),
        "exchanges_per_dialogue": {
            "min": int(exchanges.min()),
            "mean": round(float(exchanges.mean()), 2),
            "max": int(exchanges.max()),
        },
        "mbti": dict(sorted(collections.Counter(d.mbti for d in dialogues).items())),
        "emotion": dict(sorted(collections.Counter(d.emotion for d in dialogues).items())),
        "emotions_missing": [e for e in EMOTIONS if e not in {d.emotion for d in dialogues}],
        "tokens": {"total": pct(total), "prompt": pct(prompt), "target": pct(target)},
        "truncated_examples": sum(e.dropped_turns > 0 for e in examples),
        "emotion_disagreements": emotion_disagreements(dialogues),
    }


def _histogram(counts: dict[str, int], width: int = 30) -> list[str]:
    top = max(counts.values(), default=1)
    return [f"  {k:<13} {v:>6}  {'#' * max(1, round(width * v / top))}" for k, v in counts.items()]


def format_stats(stats: dict) -> str:
    ex = stats["exchanges_per_dialogue"]
    unit = {"turn": "assistant turns", "dialogue": "whole dialogues"}[stats["example_form"]]
    lines = [
        f"dialogues: {stats['dialogues']}",
        f"examples ({unit}): {stats['examples']}",
        f"profiles: {stats['profiles']}",
        f"exchanges per dialogue: min {ex['min']}, mean {ex['mean']}, max {ex['max']}",
        f"MBTI types ({len(stats['mbti'])}):",
        *_histogram(stats["mbti"]),
        f"emotions ({len(stats['emotion'])} of {len(EMOTIONS)}):",
        *_histogram(stats["emotion"]),
    ]
    if stats["emotions_missing"]:
        lines.append(f"  missing: {', '.join(stats['emotions_missing'])}")
    lines.append(
        "token lengths per example:" + "".join(f"{p:>7}" for p in stats["tokens"]["total"])
    )
    for part, vals in stats["tokens"].items():
        lines.append(f"  {part:<24}" + "".join(f"{v:>7}" for v in vals.values()))
    lines.append(f"examples truncated to fit: {stats['truncated_examples']}")
    dis = stats["emotion_disagreements"]
    lines.append(
        f"emotion spans disagreeing with the record's gold emotion field: {dis['turns']} "
        f"turn(s) in {dis['dialogues']} dialogue(s) (the field is the gold label)"
    )
    lines += [f"  {where}" for where in dis["first"]]
    if dis["turns"] > len(dis["first"]):
        lines.append(f"  ... and {dis['turns'] - len(dis['first'])} more")
    return "\n".join(lines)
