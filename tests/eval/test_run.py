"""`run_eval` on the bundled sample's test split: injected completions and a judge
whose scores the test sets give exactly the expected table; a partial completions
file (with a torn last line) is resumed without regenerating what is there; judge
scores are cached; other settings in the same workdir are refused."""

import json
import os
from fractions import Fraction

import pytest

from kardia_jax.errors import ConfigError
from kardia_jax.eval import run as run_mod
from kardia_jax.eval import run_eval
from kardia_jax.eval.store import COMPLETIONS, SCORES
from kardia_jax.rewards.rubric import DIMENSIONS
from kardia_jax.sampling.tokens import load_tokenizer_for

from .conftest import StubJudge, eval_config


def answer(emotion: str, tag: str) -> str:
    return (
        f"<|understanding_begin|>u {tag}<|understanding_end|>\n"
        f"<|reasoning_begin|>r<|reasoning_end|>\n"
        f"<|emotion_begin|>{emotion}<|emotion_end|>\n"
        f"<|response_begin|>reply {tag}<|response_end|>"
    )


def items_for(config, policy):
    items, _, _ = run_mod.load_eval_examples(config, load_tokenizer_for(policy))
    return items


def write_rows(path, rows, torn: str = ""):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write(torn)


@pytest.fixture
def no_policy(monkeypatch):
    """Fails the test if the policy is loaded (everything should come from the file)."""

    def refuse(*a, **k):
        raise AssertionError("the policy was loaded although every completion exists")

    monkeypatch.setattr(run_mod, "_Policy", refuse)


def test_fixed_completions_and_judge_give_exact_table(tmp_path, tiny_policy, no_policy):
    config = eval_config()
    items = items_for(config, tiny_policy)
    assert len(items) == 8
    other = {"sad": "angry"}
    rows, table, expected_hits, expected_fail = [], {}, 0, 0
    for i, it in enumerate(items):
        gold = it.example.emotion
        if i == 4:  # no spans at all: a format failure with no label
            text = f"just talking {i} <script>alert(1)</script>"
            expected_fail += 1
        elif i % 3 == 1:  # wrong label
            text = answer(other.get(gold, "sad"), str(i))
        else:
            text = answer(gold.upper() + ".", str(i))  # normalised to a hit
            expected_hits += 1
        rows.append({"id": it.id, "gold": gold, "completion": text, "finish_reason": "eos"})
        table[text] = tuple(float(1 + (i + j) % 5) for j in range(len(DIMENSIONS)))
    write_rows(tmp_path / COMPLETIONS, rows)
    judge = StubJudge(table)
    r = run_eval(config, tiny_policy, str(tmp_path), judge=judge)

    assert r["counts"]["generated_this_run"] == 0 and r["counts"]["judged_this_run"] == 8
    assert r["emotion_accuracy"]["correct"] == expected_hits
    assert r["emotion_accuracy"]["value"] == pytest.approx(100 * expected_hits / 8)
    assert r["format_failure_rate"]["count"] == expected_fail
    means = []
    for j, d in enumerate(DIMENSIONS):
        mean = Fraction(sum(int(table[row["completion"]][j]) for row in rows), 8)
        means.append(float(mean))
        s = r["rubric"]["dimensions"][d]
        assert s["mean"] == pytest.approx(float(mean), abs=1e-9)
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    lo, hi = r["emotion_accuracy"]["ci95"]
    assert lo <= r["emotion_accuracy"]["value"] <= hi
    per = {}
    for i, it in enumerate(items):
        n, c = per.get(it.example.emotion, (0, 0))
        per[it.example.emotion] = (n + 1, c + (i % 3 != 1 and i != 4))
    assert {k: (v["n"], v["correct"]) for k, v in r["per_emotion"].items()} == per

    md = (tmp_path / "results.md").read_text()
    acc = f"{100 * expected_hits / 8:.2f}%"
    row = f"| **ours** ({r['label']}) | {acc} | " + " | ".join(f"{m:.3f}" for m in means) + " |"
    assert row in md.splitlines()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["emotion_accuracy"] == r["emotion_accuracy"]
    assert saved["rubric"]["judge"].startswith("stub-judge")
    html = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html

    # Rerun: nothing generated, nothing judged again, same figures.
    again = run_eval(config, tiny_policy, str(tmp_path), judge=judge)
    assert len(judge.calls) == 1 and again["counts"]["judged_this_run"] == 0
    assert again["rubric"]["dimensions"] == r["rubric"]["dimensions"]


def test_resume_generates_only_missing_ids(tmp_path, tiny_policy):
    config = eval_config(**{"eval.limit": 6, "eval.batch_size": 4})
    items = items_for(config, tiny_policy)
    kept = [
        {"id": it.id, "gold": it.example.emotion, "completion": f"kept {k}", "finish_reason": "eos"}
        for k, it in enumerate(items[:2])
    ]
    torn = json.dumps({"id": items[2].id, "gold": "sad", "completion": "torn"})[:30]
    write_rows(tmp_path / COMPLETIONS, kept, torn=torn)
    r = run_eval(config, tiny_policy, str(tmp_path), report=False)
    assert r["counts"]["generated_this_run"] == 4
    lines = (tmp_path / COMPLETIONS).read_text().splitlines()
    rows = [json.loads(x) for x in lines]  # the torn line is gone: every line parses
    assert rows[:2] == kept
    assert sorted(x["id"] for x in rows) == sorted(it.id for it in items)
    assert all(x["finish_reason"] in ("eos", "stop", "length") for x in rows[2:])
    assert not os.path.exists(tmp_path / SCORES)
    assert r["rubric"] == {
        "scored": False,
        "reason": "no evaluation judge (pass --judge DIR or set judge.path)",
    }
    before = (tmp_path / COMPLETIONS).read_bytes()
    assert run_eval(config, tiny_policy, str(tmp_path))["counts"]["generated_this_run"] == 0
    assert (tmp_path / COMPLETIONS).read_bytes() == before

    # A larger limit extends the same workdir (the subset only grows)...
    r = run_eval(eval_config(**{"eval.limit": 7}), tiny_policy, str(tmp_path), report=False)
    assert r["counts"]["generated_this_run"] == 1
    # ...but other decoding settings would mix two configurations in one table.
    with pytest.raises(ConfigError, match="max_new_tokens: was 8, now 9"):
        run_eval(eval_config(**{"eval.max_new_tokens": 9}), tiny_policy, str(tmp_path))
