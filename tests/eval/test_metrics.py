"""The evaluation figures on fixed records: exact accuracy, per-emotion accuracy,
confusion counts, format failures and rubric means; bootstrap intervals that are
seeded, contain the estimate and widen when dialogues are resampled whole."""

from fractions import Fraction

import numpy as np
import pytest

from kardia_jax.errors import DataError
from kardia_jax.eval.metrics import NO_LABEL, Record, bootstrap_ci, compute_metrics
from kardia_jax.eval.table import markdown_table, results_markdown
from kardia_jax.rewards.rubric import DIMENSIONS


def answer(emotion: str, *, response: bool = True) -> str:
    parts = [
        "<|understanding_begin|>u<|understanding_end|>",
        "<|reasoning_begin|>r<|reasoning_end|>",
        f"<|emotion_begin|>{emotion}<|emotion_end|>",
    ]
    if response:
        parts.append("<|response_begin|>ok<|response_end|>")
    return "\n".join(parts)


# (gold, completion, scores): 2 dialogues of 3 turns, one of 2.
CASES = [
    ("sad", answer("sad"), (5, 4, 3, 2, 1)),
    ("sad", answer("Sad."), (4, 4, 4, 4, 4)),  # normalised: a hit
    ("sad", answer("lonely"), (3, 5, 2, 5, 5)),  # a miss
    ("proud", answer("proud", response=False), (1, 1, 1, 1, 1)),  # hit, format failure
    ("proud", "I hear you, that must be hard.", (2, 3, 4, 5, 5)),  # no label, failure
    ("proud", answer("proud"), (5, 5, 5, 5, 5)),
    ("afraid", answer("afraid") + " trailing", (3, 3, 3, 3, 3)),  # hit, text outside
    ("afraid", answer("terrified"), (4, 2, 4, 2, 4)),
]


def records():
    dialogue = ["d1", "d1", "d1", "d2", "d2", "d2", "d3", "d3"]
    return [
        Record(f"{d}#{i}", d, g, text, tuple(float(x) for x in s))
        for i, (d, (g, text, s)) in enumerate(zip(dialogue, CASES, strict=True))
    ]


def test_exact_values():
    r = compute_metrics(records(), resamples=500, seed=1)
    hits = [True, True, False, True, False, True, True, False]
    assert r["emotion_accuracy"]["correct"] == sum(hits)
    assert r["emotion_accuracy"]["value"] == pytest.approx(100 * sum(hits) / 8)
    assert r["format_failure_rate"]["count"] == 3
    assert r["format_failure_rate"]["value"] == pytest.approx(37.5)
    assert r["format_failure_rate"]["reasons"] == {"missing": 2, "text_outside": 1}
    for j, d in enumerate(DIMENSIONS):
        mean = Fraction(sum(s[j] for _, _, s in CASES), len(CASES))
        assert r["rubric"]["dimensions"][d]["mean"] == pytest.approx(float(mean), abs=1e-12)
    assert r["per_emotion"] == {
        "afraid": {"n": 2, "correct": 1, "accuracy": 50.0},
        "proud": {"n": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)},
        "sad": {"n": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)},
    }
    conf = r["confusion"]
    assert conf["gold"] == ["afraid", "proud", "sad"]  # the 32 labels' order
    assert conf["predicted"] == ["afraid", "lonely", "proud", "sad", "terrified", NO_LABEL]
    cell = {
        (g, p): conf["matrix"][i][j]
        for i, g in enumerate(conf["gold"])
        for j, p in enumerate(conf["predicted"])
    }
    assert cell["sad", "sad"] == 2 and cell["sad", "lonely"] == 1
    assert cell["proud", "proud"] == 2 and cell["proud", NO_LABEL] == 1
    assert cell["afraid", "afraid"] == 1 and cell["afraid", "terrified"] == 1
    assert sum(map(sum, conf["matrix"])) == 8
    assert r["counts"]["no_emotion_label"] == 1 and r["counts"]["dialogues"] == 3


def test_intervals_contain_estimates_and_are_seeded():
    a = compute_metrics(records(), resamples=400, seed=7)
    b = compute_metrics(records(), resamples=400, seed=7)
    assert a == b
    for m in ("emotion_accuracy", "format_failure_rate"):
        lo, hi = a[m]["ci95"]
        assert lo <= a[m]["value"] <= hi and lo < hi
    for d in DIMENSIONS:
        s = a["rubric"]["dimensions"][d]
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]


def test_bootstrap_matches_a_direct_resample_and_clusters_widen():
    rng = np.random.default_rng(0)
    values = rng.random(200)
    lo, hi = bootstrap_ci(values, resamples=300, seed=3)
    idx = np.random.default_rng(3).integers(0, 200, size=(300, 200))
    ref = np.percentile(values[idx].mean(1), [2.5, 97.5])
    np.testing.assert_allclose([lo, hi], ref)
    # 20 dialogues of 10 identical turns: resampling turns pretends there are 200
    # independent observations; resampling dialogues knows there are 20.
    per_dialogue = np.repeat(rng.random(20), 10)
    clusters = np.repeat([f"d{i}" for i in range(20)], 10)
    ex = bootstrap_ci(per_dialogue, resamples=500, seed=0)
    cl = bootstrap_ci(per_dialogue, clusters, resamples=500, seed=0)
    assert (cl[1] - cl[0]) > 2 * (ex[1] - ex[0])


def test_table_values_and_labels():
    r = compute_metrics(records(), resamples=100, seed=0)
    r.update(label="tiny", data="sample", model="m")
    table = markdown_table(r).splitlines()
    means = [float(Fraction(sum(s[j] for _, _, s in CASES), 8)) for j in range(5)]
    assert (
        table[2] == "| **ours** (tiny) | 62.50% | " + " | ".join(f"{m:.3f}" for m in means) + " |"
    )
    assert (
        table[3] == "| paper: Kardia-R1 (Qwen2.5-3B) | 65.78% | n/a | n/a | 3.650 | 4.406 | 4.653 |"
    )
    md = results_markdown(r)
    assert "different model, at a different scale" in md
    assert "| Format failures | 37.50% |" in md
    assert "| proud | 3 | 2 | 66.67% |" in md


def test_unscored_and_bad_input():
    unscored = [Record(x.id, x.dialogue, x.gold, x.completion) for x in records()]
    r = compute_metrics(unscored, resamples=50)
    assert "rubric" not in r
    r["rubric"] = {"scored": False, "reason": "no judge"}
    r.update(label="x")
    assert markdown_table(r).splitlines()[2].count("not scored") == 5
    with pytest.raises(DataError, match="no rubric scores"):
        compute_metrics([records()[0], unscored[1]], resamples=10)
    with pytest.raises(DataError, match="not one of the 32"):
        compute_metrics([Record("a", "d", "hungry", "x")], resamples=10)
