"""Generate-then-parse judging, for judges that need to reason before scoring: the
sampler decodes the judge's answer to the shared prefix, the five "Name: digit"
lines are parsed, and a dimension that cannot be parsed is counted and gets the
configured fallback ("expected": that prompt's expected score; or a fixed score).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from flax import nnx

from kardia_jax.rewards.rubric import DIMENSIONS


def _line_pattern(name: str) -> re.Pattern:
    # "Empathy: 4", "**Empathy**: 4", "Empathy = 4/5", "empathy - 4"; not "Empathy: 4.5"
    # or "Empathy: 45" (a score is one digit).
    words = r"\s+".join(map(re.escape, name.split()))
    return re.compile(rf"{words}\W{{0,3}}\s*[:=\-]\s*\**\s*([1-5])(?![\d.]\d)(?!\d)", re.I)


def parse_scores(text: str, names: Sequence[str]) -> np.ndarray:
    """[len(names)] float32 scores read from a judge's answer; NaN where a dimension
    has no score. Reasoning judges think first: only the text after the last
    "</think>" counts, and a later line for a dimension overrides an earlier one."""
    answer = text.rsplit("</think>", 1)[-1]
    out = np.full(len(names), np.nan, np.float32)
    for j, name in enumerate(names):
        found = _line_pattern(name).findall(answer)
        if found:
            out[j] = float(found[-1])
    return out


def generate_scores(judge, prefixes: Sequence[Sequence[int]]):
    """(scores [U, 5], score-token mass [U, 5] (NaN where generated), number of
    prompts with at least one unparsed dimension)."""
    from kardia_jax.sampling import SamplingConfig

    cfg = judge.config
    sampler = _sampler(judge)
    sampling = SamplingConfig(temperature=cfg.temperature)
    u = len(prefixes)
    scores = np.full((u, len(DIMENSIONS)), np.nan, np.float32)
    step = judge.batch_bucket(cfg.max_batch)
    for lo in range(0, u, step):
        chunk = [list(p) for p in prefixes[lo : lo + step]]
        judge.totals["generate_calls"] += 1
        out = sampler(chunk, cfg.max_new_tokens, sampling, seed=judge.totals["generate_calls"])
        for i in range(len(chunk)):
            text = judge.tokenizer.decode(out.ids(i), skip_special_tokens=True)
            scores[lo + i] = parse_scores(text, judge.rubric.names)
    mass = np.full_like(scores, np.nan)
    bad = np.isnan(scores)
    failed = np.flatnonzero(bad.any(axis=1))
    if failed.size:
        if cfg.parse_fallback == "expected":
            s, m = judge.score_prefixes([prefixes[i] for i in failed], prefix_sharing=True)
            rows = bad[failed]
            scores[failed] = np.where(rows, s, scores[failed])
            mass[failed] = np.where(rows, m, mass[failed])
        else:
            scores[bad] = float(cfg.parse_fallback)
    return scores, mass, int(failed.size)


def _sampler(judge):
    """One sampler per judge, built on first use (its programs compile per bucket)."""
    if judge._sampler is None:
        from kardia_jax.sampling import Sampler
        from kardia_jax.sampling.tokens import eos_ids_for

        model = nnx.merge(judge.graphdef, judge.params)
        judge._sampler = Sampler(
            model,
            eos_ids=eos_ids_for(judge.model_config, judge.tokenizer),
            pad_id=judge.pad_id,
            mesh=judge.mesh,
            rules=judge.rules,
        )
    return judge._sampler
