"""A reward that fails once: `tests.rl.toy_rewards.planted`, except that call number
KARDIA_FAULT_NAN_CALL (from 1, counted in this process) returns NaN for one row, as a
judge that breaks down would."""

import os

import numpy as np

from tests.rl.toy_rewards import planted

_calls = 0


def nan_once(texts, contexts, gold):
    global _calls
    _calls += 1
    out = planted(texts, contexts, gold)
    if _calls == int(os.environ["KARDIA_FAULT_NAN_CALL"]):
        out["total"] = out["total"].copy()
        out["total"][0] = np.nan
    return out
