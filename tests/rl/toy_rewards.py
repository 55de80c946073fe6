"""Rewards the GRPO tests control, plugged in with `--config.reward.fn=MODULE:NAME`
(called as fn(texts, contexts, gold_emotions) like `KardiaReward`)."""

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
