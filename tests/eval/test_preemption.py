"""Evaluation stopped by SIGTERM (kardia_jax/train/preemption.py): generation and
judging stop after the batch in progress, its rows written, and the rerun does only
the rest, ending with the files and table of an uninterrupted run."""

import json
import os
import signal
import zlib

import numpy as np
import pytest

from kardia_jax.errors import Preempted
from kardia_jax.eval import run as run_mod
from kardia_jax.eval import run_eval
from kardia_jax.eval.store import COMPLETIONS, SCORES
from kardia_jax.rewards.rubric import DIMENSIONS

from .conftest import eval_config


class HashJudge:
    """Scores from a hash of the completion; sends this process SIGTERM during its
    call number `term_at` (1-based; 0: never)."""

    name = "hash-judge"

    def __init__(self, term_at: int = 0):
        self.term_at, self.calls = term_at, 0

    def evaluate(self, contexts, completions):
        self.calls += 1
        if self.calls == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)

        class Result:
            scores = np.asarray(
                [
                    [1 + (zlib.crc32(c.encode()) >> (3 * j)) % 5 for j in range(len(DIMENSIONS))]
                    for c in completions
                ],
                np.float32,
            )

        return Result()


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_sigterm_stops_eval_after_the_batch_in_progress(tmp_path, tiny_policy, monkeypatch):
    config = eval_config(**{"eval.batch_size": 2, "judge.batch_size": 2})
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    handler = signal.getsignal(signal.SIGTERM)
    r0 = run_eval(config, tiny_policy, straight, judge=HashJudge(), report=False)
    assert r0["counts"]["generated_this_run"] == 8

    # SIGTERM while the second batch of 2 generates: that batch is finished and written.
    generate = run_mod._Policy.generate
    calls = []

    def generate_then_term(self, items, max_new_tokens, seed):
        calls.append(len(items))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return generate(self, items, max_new_tokens, seed)

    monkeypatch.setattr(run_mod._Policy, "generate", generate_then_term)
    with pytest.raises(Preempted, match=r"SIGTERM: wrote 4/8 completions \(eval\)") as stop:
        run_eval(config, tiny_policy, broken, judge=HashJudge(), report=False)
    assert stop.value.step == 2 and calls == [2, 2]
    assert len(_rows(os.path.join(broken, COMPLETIONS))) == 4
    assert not os.path.exists(os.path.join(broken, SCORES))
    # The handler is put back: a stray flag must not stop the next run.
    assert signal.getsignal(signal.SIGTERM) == handler
    monkeypatch.setattr(run_mod._Policy, "generate", generate)

    # The rerun generates the other 4, then is stopped in its third judge batch.
    with pytest.raises(Preempted, match=r"SIGTERM: wrote 6/8 scores \(eval\)"):
        run_eval(config, tiny_policy, broken, judge=HashJudge(term_at=3), report=False)
    assert len(_rows(os.path.join(broken, SCORES))) == 6
    r = run_eval(config, tiny_policy, broken, judge=HashJudge(), report=False)
    assert r["counts"]["generated_this_run"] == 0 and r["counts"]["judged_this_run"] == 2

    for name in (COMPLETIONS, SCORES):  # the same rows, each once
        a, b = (_rows(os.path.join(w, name)) for w in (straight, broken))
        assert sorted(a, key=lambda x: x["id"]) == sorted(b, key=lambda x: x["id"])
    assert r["emotion_accuracy"] == r0["emotion_accuracy"]
    assert r["rubric"]["dimensions"] == r0["rubric"]["dimensions"]
