"""Rewards the GRPO tests control, plugged in with `--config.reward.fn=MODULE:NAME`
(called as fn(texts, contexts, gold_emotions) like `KardiaReward`)."""

import json
import os
import re
import zlib

import numpy as np

_MARKER = re.compile(r"<\|(?:understanding|reasoning|emotion|response)_(?:begin|end)\|>")
MARKERS_FOR_FULL_REWARD = 8

# Prompts with these gold emotions get one reward on all their completions: planted
# zero-variance groups (half of tests/rl/conftest.py DIALOGUES).
CONSTANT = frozenset({"lonely", "afraid", "joyful", "sad"})


def span_markers(texts, contexts, gold):
    """Verifiable: the completion emits span markers, 1.0 for eight (a four-span
    answer's worth), proportionally fewer for fewer."""
    count = np.asarray([len(_MARKER.findall(t)) for t in texts], np.float32)
    return {"total": np.minimum(count / MARKERS_FOR_FULL_REWARD, 1.0)}


def planted(texts, contexts, gold):
    """0.5 for every completion of a CONSTANT prompt; otherwise a hash of the text in
    [0, 1) (distinct completions get distinct rewards)."""
    total = [
        0.5 if g in CONSTANT else (zlib.crc32(t.encode()) % 1000) / 1000
        for t, g in zip(texts, gold, strict=True)
    ]
    return {"total": np.asarray(total, np.float32)}


# A JSON file: {"log": a run's grpo_log.jsonl, "heldout": [situations of held-out
# prompts], "scores": [the held-out score at step 0, 1, ...]}.
SCHEDULE_ENV = "KARDIA_TOY_SCHEDULE"


def scheduled(texts, contexts, gold):
    """Checkpoint selection under control: held-out prompts (by situation) all get the
    score the schedule gives the current step, read as the rows in the run's log
    (selection scores step s right after logging it; the baseline finds none); the
    training prompts get a hash of the text (distinct completions, distinct rewards:
    the policy moves). A call mixing the two means held-out prompts were trained on."""
    with open(os.environ[SCHEDULE_ENV], encoding="utf-8") as f:
        schedule = json.load(f)
    held = [c.situation in schedule["heldout"] for c in contexts]
    if not any(held):
        return {"total": np.asarray([zlib.crc32(t.encode()) % 1000 / 1000 for t in texts])}
    if not all(held):
        raise ValueError("a reward call mixes held-out and training prompts")
    step = 0
    if os.path.exists(schedule["log"]):
        with open(schedule["log"], encoding="utf-8") as f:
            step = sum(1 for line in f if line.strip())
    n = len(texts)
    return {"total": np.full(n, schedule["scores"][step]), "step": np.full(n, float(step))}
