"""Table 2's rows (eval/compare.py): Base, SFT and a final policy evaluated on the
same test turns with one judge, built once; the combined results.json and results.md
repeat each row's own figures beside the paper's; a rerun generates, judges and loads
nothing; rows whose tokenizers give different test turns are refused; and the
`kardia-jax eval --model NAME=DIR` rows form of the CLI."""

import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest

from kardia_jax import cli
from kardia_jax.errors import CheckpointError, ConfigError
from kardia_jax.eval import run as run_mod
from kardia_jax.eval.compare import check_rows, evaluate_rows, local_judge, parse_rows
from kardia_jax.eval.run import API_CACHE, judge_identity
from kardia_jax.eval.store import COMPLETIONS, RESULTS_JSON, SCORES
from kardia_jax.models import check_hf_checkpoint, save_hf_model
from kardia_jax.rewards import RubricJudge
from kardia_jax.rewards.rubric import DIMENSIONS, load_rubric
from kardia_jax.sampling.tokens import load_tokenizer_for

from ..rewards.helpers import TEST_RUBRIC_TEXT, _config, marker_model, numpy_model
from ..sampling.conftest import char_tokenizer
from .conftest import EVAL_TINY, eval_config
from .test_run import answer


def judge_scores(text: str) -> list[float]:
    """The fake judge's five scores for a completion: a fixed function of its text."""
    return [
        float(1 + int(hashlib.sha256(f"{j}:{text}".encode()).hexdigest(), 16) % 5)
        for j in range(len(DIMENSIONS))
    ]


class CountingJudge:
    """Stands in for `RubricJudge.from_pretrained`: records every build and call, and
    names itself as a judge built from those arguments would."""

    builds: list = []

    def __init__(self, path, settings, **kw):
        CountingJudge.builds.append((path, settings, kw))
        self.name, self.rubric, self.config = path, load_rubric(settings.rubric), settings
        self.calls: list[int] = []

    def evaluate(self, contexts, completions):
        assert len(contexts) == len(completions)
        self.calls.append(len(completions))

        class Result:
            scores = np.asarray([judge_scores(c) for c in completions], np.float32)

        return Result()


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A real tiny judge checkpoint (prepare_eval checks it and renders its prompts)
    and a short rubric file."""
    root = tmp_path_factory.mktemp("rows_judge")
    marker_model(str(root / "judge"))
    (root / "rubric.txt").write_text(TEST_RUBRIC_TEXT)
    return str(root / "judge"), str(root / "rubric.txt")


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory):
    """A second random policy with the same tokenizer as `tiny_policy`."""
    path = str(tmp_path_factory.mktemp("rows_sft") / "hf")
    save_hf_model(numpy_model(_config(), seed=7, std=0.5), path, tokenizer=char_tokenizer())
    return path


@pytest.fixture
def counting_judge(monkeypatch):
    CountingJudge.builds = []
    monkeypatch.setattr(RubricJudge, "from_pretrained", CountingJudge)
    return CountingJudge


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_three_rows_same_turns_one_judge(
    tmp_path, tiny_policy, sft_policy, judge_dir, counting_judge, monkeypatch
):
    judge, rubric = judge_dir
    config = eval_config(**{"judge.rubric": rubric})
    work = tmp_path / "rows"
    items, _, _ = run_mod.load_eval_examples(config, load_tokenizer_for(tiny_policy))
    ids = [it.id for it in items]
    # The final row's answers are written beforehand (so its accuracy is known): every
    # other one names the gold emotion, the rest a wrong one.
    final_rows, hits = [], 0
    for i, it in enumerate(items):
        gold = it.example.emotion
        label = gold if i % 2 == 0 else ("sad" if gold != "sad" else "angry")
        hits += label == gold
        final_rows.append(
            {"id": it.id, "gold": gold, "completion": answer(label, str(i)), "finish_reason": "eos"}
        )
    (work / "kardia-r1").mkdir(parents=True)
    with open(work / "kardia-r1" / COMPLETIONS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in final_rows)
    rows = [("Base", tiny_policy), ("SFT", sft_policy), ("Kardia-R1", tiny_policy)]
    logged = []
    out = evaluate_rows(config, rows, str(work), judge_dir=judge, log=logged.append)

    # One judge, built once from the judge dir, scoring all three rows.
    assert len(counting_judge.builds) == 1
    path, settings, kw = counting_judge.builds[0]
    assert path == os.path.abspath(judge) and settings.rubric == rubric
    assert len(logged) == 3 and logged[0].startswith("eval: row Base: ")

    assert [r["name"] for r in out["rows"]] == ["Base", "SFT", "Kardia-R1"]
    assert out == json.loads((work / RESULTS_JSON).read_text())
    assert out["counts"]["examples"] == len(ids) == 8
    assert out["counts"]["generated_this_run"] == 16  # Base and SFT; the final row had its own
    assert out["counts"]["judged_this_run"] == 24
    own = {}
    for row, slug in zip(out["rows"], ("base", "sft", "kardia-r1"), strict=True):
        assert row["results"] == os.path.join(slug, RESULTS_JSON)
        r = json.loads((work / row["results"]).read_text())
        own[row["name"]] = r
        assert r["label"] == row["name"] and row["model"] == r["model"]
        # The combined file repeats the row's own figures.
        assert row["emotion_accuracy"] == r["emotion_accuracy"]["value"]
        assert row["emotion_accuracy_ci95"] == r["emotion_accuracy"]["ci95"]
        assert row["format_failure_rate"] == r["format_failure_rate"]["value"]
        assert row["rubric"] == {d: r["rubric"]["dimensions"][d]["mean"] for d in DIMENSIONS}
        # Same test turns for every row, each judged by the one judge.
        comps = read_jsonl(work / slug / COMPLETIONS)
        assert sorted(c["id"] for c in comps) == sorted(ids)
        scores = read_jsonl(work / slug / SCORES)
        assert {s["judge"] for s in scores} == {out["judge"]}
        for j, d in enumerate(DIMENSIONS):
            expected = np.mean([judge_scores(c["completion"])[j] for c in comps])
            assert row["rubric"][d] == pytest.approx(expected, abs=1e-6)
    final = out["rows"][2]
    assert final["emotion_accuracy"] == pytest.approx(100 * hits / 8)
    assert own["Base"]["counts"]["generated_this_run"] == 8

    md = (work / "results.md").read_text().splitlines()
    for name, r in own.items():
        acc = r["emotion_accuracy"]
        line = (
            f"| **ours** ({name}) | {acc['value']:.2f}% | "
            f"[{acc['ci95'][0]:.2f}%, {acc['ci95'][1]:.2f}%] | "
            + " | ".join(f"{r['rubric']['dimensions'][d]['mean']:.3f}" for d in DIMENSIONS)
            + " |"
        )
        assert line in md
        link = f"[{name.lower()}/results.md]({name.lower()}/results.md)"
        assert any(link in x for x in md)
    # The paper's published rows; figures it does not give stay n/a.
    assert (
        "| paper: Kardia-R1 (Qwen2.5-3B) | 65.78% | n/a | n/a | n/a | 3.650 | 4.406 | 4.653 |" in md
    )
    assert "| paper: GPT-4o | 15.14% | n/a | n/a | n/a | 3.291 | 4.304 | 4.910 |" in md

    html = (work / "report.html").read_text()
    assert html.count('<tr class="ours">') == 3 and "paper: GPT-4o" in html
    assert html.count('<div class="answer">') == 3 * 8  # every sample, every row's answer
    assert html.count('<div class="who">Base</div>') == 8

    # Rerun: no policy loaded, nothing generated or judged, the judge never built.
    def refuse(*a, **k):
        raise AssertionError("a policy was loaded although every completion exists")

    monkeypatch.setattr(run_mod, "_Policy", refuse)
    counting_judge.builds.clear()
    again = evaluate_rows(config, rows, str(work), judge_dir=judge, log=logged.append)
    assert counting_judge.builds == []
    assert again["counts"]["generated_this_run"] == again["counts"]["judged_this_run"] == 0
    strip = ("generated_this_run", "judged_this_run")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["rows"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in out["rows"]
    ]


class FakeApiJudge(CountingJudge):
    """Stands in for `ApiJudge.from_spec`: records each reply through `record` (as the
    real one appends to the workdir's cache) and counts requests in `totals`."""

    made: list = []

    def __init__(self, spec, settings, *, cache_rows, record):
        FakeApiJudge.made.append(self)
        self.name, self.rubric, self.config = spec, load_rubric(settings.rubric), settings
        self.cache_rows, self.record, self.closed = list(cache_rows), record, 0
        self.calls, self.totals = [], Counter()

    def evaluate(self, contexts, completions):
        self.totals["requests"] += len(completions)
        for c in completions:
            self.record({"key": c, "scores": judge_scores(c)})
        return super().evaluate(contexts, completions)

    def api_counts(self):
        return {
            "requests": self.totals["requests"],
            "retries": {},
            "failures": 0,
            "cache_hits": 0,
            "tokens": {"prompt": 0, "completion": 0},
        }

    def close(self):
        self.closed += 1


def test_rows_share_one_api_judge_and_its_cache(tmp_path, tiny_policy, monkeypatch):
    from kardia_jax.rewards.api_judge import ApiJudge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never contacted
    FakeApiJudge.made = []
    monkeypatch.setattr(ApiJudge, "from_spec", FakeApiJudge)
    config = eval_config(**{"eval.limit": 3, "eval.max_new_tokens": 4})
    rows = [("Base", tiny_policy), ("SFT", tiny_policy)]
    out = evaluate_rows(config, rows, str(tmp_path), judge_dir="openai:m", report=False)
    (judge,) = FakeApiJudge.made
    assert judge.closed == 1 and judge.calls == [3, 3]
    # One cache for both rows, in the rows workdir; each row counts its own requests.
    cache = read_jsonl(tmp_path / API_CACHE)
    assert len(cache) == 6
    for slug in ("base", "sft"):
        r = json.loads((tmp_path / slug / RESULTS_JSON).read_text())
        assert r["rubric"]["api"]["requests"] == 3 and r["rubric"]["judge"] == out["judge"]
    evaluate_rows(config, rows, str(tmp_path), judge_dir="openai:m", warnings=["judge X"])
    assert FakeApiJudge.made[1].cache_rows == cache and FakeApiJudge.made[1].calls == []
    # A warning the caller gives (the pipeline's: the evaluation judge is the training
    # judge) is in results.json, results.md and the report.
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["warnings"] == ["judge X"]
    assert "> **Warning:** judge X" in (tmp_path / "results.md").read_text()
    assert "Warning: judge X" in (tmp_path / "report.html").read_text()


def merged_tokenizer():
    """The byte-level test tokenizer plus a few merges: fewer tokens for the same text."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = char_tokenizer()
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n")]
    merges += [("o", "u"), ("Ġ", "a"), ("Ġ", "s"), ("r", "e"), ("o", "n"), ("Ġ", "m")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    spec["model"]["merges"] = [[a, b] for a, b in merges]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = base.chat_template
    return fast


def test_rows_with_different_test_turns_are_refused(tmp_path, tiny_policy):
    merged = str(tmp_path / "merged")
    tok = merged_tokenizer()
    save_hf_model(numpy_model(_config(vocab_size=128), seed=1), merged, tokenizer=tok)

    def first_turn_lengths(policy):
        # A dialogue's first assistant turn has no earlier turns to drop: its prompt
        # length is the least that must fit.
        config = eval_config(**{"eval.limit": 0})
        items, _, _ = run_mod.load_eval_examples(config, load_tokenizer_for(policy))
        first = {}
        for it in items:
            d = it.dialogue_id
            if d not in first or it.example.turn < first[d].example.turn:
                first[d] = it
        return {it.id: len(it.example.prompt_ids) for it in first.values()}

    chars, fewer = first_turn_lengths(tiny_policy), first_turn_lengths(merged)
    longest = max(chars, key=chars.get)
    # One token short of the longest first turn at one token per byte: that turn is
    # skipped with the byte tokenizer, and fits with the merges.
    limit = chars[longest] - 1
    assert fewer[longest] <= limit
    config = eval_config(**{"eval.limit": 0, "data.mode": "skip", "data.max_length": limit})
    with pytest.raises(ConfigError, match="rows 'SFT' and 'Base' get different test turns") as e:
        check_rows(config, [("SFT", merged), ("Base", tiny_policy)], str(tmp_path / "w"))
    assert "only in 'SFT')" in str(e.value)  # the merges fit more turns
    # The same rows with the byte tokenizer's dir for both are accepted.
    ok = check_rows(config, [("SFT", tiny_policy), ("Base", tiny_policy)], str(tmp_path / "v"))
    assert longest not in {it.id for it in ok[0].items}


def test_check_rows_before_a_policy_exists(tmp_path, tiny_policy):
    """A pipeline checks the final row before GRPO writes it: with the tokenizer and
    model config it will have, the missing dir is not read."""
    config = eval_config()
    later = str(tmp_path / "grpo" / "hf")
    rows = [("SFT", tiny_policy), ("Kardia-R1", later)]
    with pytest.raises(CheckpointError):
        check_rows(config, rows, str(tmp_path / "w"))
    upstream = {
        "Kardia-R1": {
            "tokenizer": load_tokenizer_for(tiny_policy),
            "model_config": check_hf_checkpoint(tiny_policy),
        }
    }
    inputs = check_rows(config, rows, str(tmp_path / "w"), upstream=upstream)
    assert inputs[1].model_dir == later and len(inputs[1].items) == 8
    assert not os.path.exists(later)


def test_row_names_and_workdirs_are_checked(tmp_path, tiny_policy):
    with pytest.raises(ConfigError, match="rows 'SFT' and 'sft' would share the folder"):
        parse_rows([("SFT", "a"), ("sft", "b")])
    with pytest.raises(ConfigError, match="needs a letter or digit"):
        parse_rows([("--", "a")])
    with pytest.raises(ConfigError, match="no rows"):
        parse_rows([])
    assert [r.slug for r in parse_rows([("Kardia-R1 (3B)", "x")])] == ["kardia-r1-3b"]
    (tmp_path / COMPLETIONS).write_text("")
    with pytest.raises(ConfigError, match="single policy's evaluation"):
        check_rows(eval_config(), [("Base", tiny_policy)], str(tmp_path))


def test_shared_judge_is_named_as_the_real_judge(judge_dir):
    """The score cache is keyed before the judge is loaded: the name it predicts is
    the one a real RubricJudge from the same dir and settings gives itself."""
    judge, rubric = judge_dir
    config = eval_config(**{"judge.rubric": rubric})
    shared = local_judge(config, judge, None, None)
    from kardia_jax.eval.config import judge_settings

    real = RubricJudge.from_pretrained(
        os.path.abspath(judge), judge_settings(config.judge), dtype="float32"
    )
    assert judge_identity(shared) == judge_identity(real)
    assert shared.builds == 0


def test_eval_cli_rows(tmp_path, tiny_policy, sft_policy, capsys):
    work = tmp_path / "rows"
    argv = ["eval", "--config", EVAL_TINY, "--workdir", str(work)]
    small = ["--config.eval.limit=2", "--config.eval.max_new_tokens=4"]
    models = ["--model", f"Base={tiny_policy}", "--model", f"SFT={sft_policy}"]
    assert cli.main(argv + models + small) == 0
    out = capsys.readouterr().out
    assert "Base: emotion accuracy" in out and "SFT: emotion accuracy" in out
    r = json.loads((work / RESULTS_JSON).read_text())
    assert [x["name"] for x in r["rows"]] == ["Base", "SFT"]
    assert [x["model"] for x in r["rows"]] == [tiny_policy, sft_policy]
    assert r["counts"]["examples"] == 2 and (work / "base" / COMPLETIONS).exists()
    # `kardia-jax report` rebuilds the same rows page from the workdir alone.
    again = tmp_path / "again.html"
    assert cli.main(["report", "--eval", str(work), "--out", str(again)]) == 0
    assert again.read_text() == (work / "report.html").read_text()
    assert again.read_text().count('<div class="answer">') == 2 * 2

    # Several plain dirs, or plain and named mixed, are refused in one line.
    assert cli.main(argv + ["--model", tiny_policy, "--model", sft_policy]) == 2
    assert "name each one as NAME=DIR" in capsys.readouterr().err
    assert cli.main(argv + ["--model", tiny_policy, "--model", f"SFT={sft_policy}"]) == 2
    assert "name every row" in capsys.readouterr().err
