"""The evaluation figures, from finished records (pure numpy, no model): Emotion
Accuracy, per-emotion accuracy, the gold x predicted confusion counts, the
format-failure rate, rubric means, and percentile bootstrap 95% intervals."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from kardia_jax.data.emotions import EMOTION_ID, normalize_emotion
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rewards.emotion import predicted_emotions
from kardia_jax.rewards.format import format_reasons
from kardia_jax.rewards.rubric import DIMENSIONS

NO_LABEL = "(none)"  # confusion column of completions without one valid emotion label
BOOTSTRAP_UNITS = ("example", "dialogue")


@dataclasses.dataclass(frozen=True)
class Record:
    """One scored test example: what the metrics need and nothing more."""

    id: str
    dialogue: str  # the source dialogue (the bootstrap's cluster)
    gold: str  # gold emotion label
    completion: str
    scores: tuple[float, ...] | None = None  # the five rubric scores, DIMENSIONS order


def bootstrap_ci(
    values: np.ndarray,
    clusters: Sequence[str] | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    With `clusters`, whole clusters are resampled (turns of one dialogue share a
    persona, a situation and usually a gold label, so they are not independent) and
    each resample's mean is its total over its turn count.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise DataError(f"bootstrap needs a non-empty vector, got shape {values.shape}")
    if resamples < 1:
        raise ConfigError(f"eval.bootstrap={resamples}: need >= 1 resamples")
    if clusters is None:
        sums, counts = values, np.ones_like(values)
    else:
        if len(clusters) != len(values):
            raise DataError(f"{len(clusters)} cluster ids for {len(values)} values")
        _, inverse = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    n = len(sums)
    means = np.empty(resamples)
    # Chunks bound the [chunk, n] index matrix (20k test turns x 1000 resamples would
    # be 160 MB at once).
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for lo in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - lo), n))
        means[lo : lo + len(idx)] = sums[idx].sum(1) / counts[idx].sum(1)
    tail = (1 - level) / 2 * 100
    lo_q, hi_q = np.percentile(means, [tail, 100 - tail])
    return float(lo_q), float(hi_q)


def _label_order(labels) -> list[str]:
    return sorted(labels, key=lambda x: (x == NO_LABEL, EMOTION_ID.get(x, 99), x))


def compute_metrics(
    records: Sequence[Record],
    *,
    resamples: int = 1000,
    seed: int = 0,
    unit: str = "dialogue",
) -> dict:
    """Every figure of results.json from the records (rubric figures only over the
    records that carry scores; all records must, or none)."""
    if not records:
        raise DataError("no evaluation records to score")
    if unit not in BOOTSTRAP_UNITS:
        raise ConfigError(f"eval.bootstrap_unit={unit!r}: expected one of {BOOTSTRAP_UNITS}")
    n = len(records)
    texts = [r.completion for r in records]
    gold = []
    for r in records:
        g = normalize_emotion(r.gold)
        if g is None:
            raise DataError(f"example {r.id}: gold emotion {r.gold!r} is not one of the 32")
        gold.append(g)
    pred = [p if p is not None else NO_LABEL for p in predicted_emotions(texts)]
    hits = np.asarray([p == g for p, g in zip(pred, gold, strict=True)], np.float64)
    clusters = [r.dialogue for r in records] if unit == "dialogue" else None
    boot = dict(resamples=resamples, seed=seed)

    def pct_ci(v):
        lo, hi = bootstrap_ci(v, clusters, **boot)
        return [100 * lo, 100 * hi]

    reasons = format_reasons(texts)
    failures = Counter(r for r in reasons if r is not None)
    fail = np.asarray([r is not None for r in reasons], np.float64)

    per_emotion = {}
    for label in _label_order(set(gold)):
        rows = [i for i, g in enumerate(gold) if g == label]
        correct = int(hits[rows].sum())
        per_emotion[label] = {
            "n": len(rows),
            "correct": correct,
            "accuracy": 100.0 * correct / len(rows),
        }
    gold_labels = _label_order(set(gold))
    pred_labels = _label_order(set(pred))
    matrix = np.zeros((len(gold_labels), len(pred_labels)), np.int64)
    for g, p in zip(gold, pred, strict=True):
        matrix[gold_labels.index(g), pred_labels.index(p)] += 1

    out = {
        "counts": {
            "examples": n,
            "dialogues": len({r.dialogue for r in records}),
            "correct_emotion": int(hits.sum()),
            "no_emotion_label": pred.count(NO_LABEL),
            "format_failures": int(fail.sum()),
        },
        "emotion_accuracy": {
            "value": 100.0 * float(hits.mean()),
            "ci95": pct_ci(hits),
            "correct": int(hits.sum()),
            "n": n,
        },
        "format_failure_rate": {
            "value": 100.0 * float(fail.mean()),
            "ci95": pct_ci(fail),
            "count": int(fail.sum()),
            "n": n,
            "reasons": dict(sorted(failures.items())),
        },
        "per_emotion": per_emotion,
        "confusion": {
            "gold": gold_labels,
            "predicted": pred_labels,
            "matrix": matrix.tolist(),
        },
        "bootstrap": {
            "method": "percentile",
            "level": 0.95,
            "resamples": resamples,
            "seed": seed,
            "unit": unit,
        },
    }
    scored = [r.scores is not None for r in records]
    if any(scored) and not all(scored):
        missing = next(r.id for r in records if r.scores is None)
        raise DataError(f"example {missing} has no rubric scores while others do")
    if all(scored):
        scores = np.asarray([r.scores for r in records], np.float64)
        if scores.shape != (n, len(DIMENSIONS)):
            raise DataError(f"rubric scores have shape {scores.shape}, expected ({n}, 5)")
        out["rubric"] = {
            "scored": True,
            "dimensions": {
                name: {
                    "mean": float(scores[:, j].mean()),
                    "ci95": list(bootstrap_ci(scores[:, j], clusters, **boot)),
                    "n": n,
                }
                for j, name in enumerate(DIMENSIONS)
            },
        }
    return out


def per_example_rows(records: Sequence[Record]) -> list[dict]:
    """Per record: predicted label, hit, format reason (for the report's samples)."""
    texts = [r.completion for r in records]
    pred = predicted_emotions(texts)
    reasons = format_reasons(texts)
    return [
        {
            "id": r.id,
            "gold": normalize_emotion(r.gold),
            "predicted": p,
            "correct": p is not None and p == normalize_emotion(r.gold),
            "format_error": why,
        }
        for r, p, why in zip(records, pred, reasons, strict=True)
    ]
