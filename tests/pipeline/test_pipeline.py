"""The end-to-end pipeline on configs/pipeline_tiny.py, on a KardiaBench-shaped folder
(train.jsonl, test.jsonl) from a base checkpoint with the curriculum on: every stage
runs; train and test never mix (each stage's data.json and its examples say so);
the curriculum fills both sides, SFT reads easy and GRPO hard; GRPO names its best
checkpoint; Base, SFT and Kardia-R1 rows come out in the table and the report (which
renders in headless Chromium, charts drawn, nothing run or fetched); and a run killed
during GRPO resumes GRPO, not SFT."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kardia_jax.errors import ConfigError
from kardia_jax.pipeline.stages import Pipeline, resolve_checkpoint, run_pipeline

from .. import browser
from ..train.conftest import REPO, run_cli

TINY = os.path.join(REPO, "kardia_jax", "configs", "pipeline_tiny.py")
ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def pipeline_args(workdir, tokenizer, *extra):
    return [
        "pipeline",
        "--config",
        TINY,
        "--workdir",
        str(workdir),
        f"--config.tokenizer={tokenizer}",
        "--config.sft.model.vocab_multiple=8",
        "--config.grpo.model.vocab_multiple=8",
        *extra,
    ]


def kardiabench_folder(path):
    """The sample's two files under the released names: profile-disjoint splits."""
    from kardia_jax.data.reader import sample_path

    path.mkdir()
    for split in ("train", "test"):
        (path / f"{split}.jsonl").write_bytes(sample_path(split).read_bytes())
    return path


def profiles(path) -> set[str]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["anon_username"] or r["person"] for r in rows}


def check_report_in_browser(report, tmp):
    """The report in headless Chromium (tests/browser.py) is drawn, its charts show and
    nothing runs or loads; the same page with its <svg> charts cut out fails the chart
    check. Without chromium this part is left out (tests/eval/test_report_browser.py
    skips, saying so) unless KARDIA_JAX_REQUIRE_BROWSER is set: then it fails."""
    chromium = browser.chromium_or_fail()
    if chromium is None:
        return
    tmp.mkdir()
    bare = tmp / "no-charts.html"
    bare.write_text(browser.strip_charts(report.read_text()))

    def shoot(html):  # 1600 pixels high: the training curves are in view
        png = str(tmp / f"{html.stem}.png")
        return browser.render(str(html), png, height=1600, chromium=chromium)

    with ThreadPoolExecutor(2) as pool:
        page, stripped = pool.map(shoot, [report, bare])
    problems = browser.page_problems(page)
    assert problems == [], f"{page.png}: {problems}"
    img = stripped.image
    assert browser.blank_problems(img) == [] and browser.offline_problems(stripped) == []
    problems = browser.chart_problems(img, stripped.dom)
    assert len(problems) == 2, problems
    assert problems[0] == "charts: no <svg> in the rendered DOM"
    assert problems[1].startswith("charts: 0 stroke pixels"), problems


def test_killed_during_grpo_the_pipeline_resumes_grpo_and_finishes(tmp_path, small_tokenizer):
    from tests.rl.conftest import write_policy

    data = kardiabench_folder(tmp_path / "KardiaBench")
    train_profiles, test_profiles = profiles(data / "train.jsonl"), profiles(data / "test.jsonl")
    assert train_profiles and test_profiles and not train_profiles & test_profiles
    base = write_policy(str(tmp_path / "base"), small_tokenizer)
    extra = (
        f"--config.data_path={data}",
        f"--config.policy={base}",
        "--config.split.enabled=true",
        "--config.split.turns=first",
        "--config.eval.data.max_length=480",  # the base checkpoint has 512 positions
    )
    work = tmp_path / "run"
    proc = run_cli(pipeline_args(work, small_tokenizer, *extra), ONE_DEVICE)
    grpo_ckpt = work / "grpo" / "checkpoints" / "2"
    deadline = time.time() + 300
    while not grpo_ckpt.is_dir():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "GRPO never reached its second checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    first = proc.communicate(timeout=60)[0]
    assert "== sft" in first and "== grpo" in first
    sft_mark = work / "pipeline" / "sft.json"
    sft_mtime = sft_mark.stat().st_mtime_ns
    assert not (work / "pipeline" / "grpo.json").exists()

    proc = run_cli(pipeline_args(work, small_tokenizer, *extra), ONE_DEVICE)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    # SFT is not rerun; GRPO continues from its checkpoint, not from step 0.
    assert "== sft: done earlier, skipped" in out
    assert sft_mark.stat().st_mtime_ns == sft_mtime
    assert "resumed from step" in out
    steps = [
        json.loads(x)["step"] for x in (work / "grpo" / "grpo_log.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]

    # Every stage finished and left its outputs.
    for stage in ("validate", "split", "sft", "grpo", "eval", "report"):
        assert (work / "pipeline" / f"{stage}.json").is_file(), stage
    check_protocol(work, data, train_profiles, test_profiles, small_tokenizer)
    html = (work / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script src=" not in html
    assert f"report: {work / 'report.html'}" in out
    check_report_in_browser(work / "report.html", tmp_path / "browser")

    # A third run has nothing left to do.
    proc = run_cli(pipeline_args(work, small_tokenizer, *extra), ONE_DEVICE)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert out.count("done earlier, skipped") == 6
    print(first, out)


def check_protocol(work, data, train_profiles, test_profiles, tokenizer):
    """The paper's protocol, read from what each stage wrote and from the examples."""
    # The curriculum: both sides filled from train, its report saved.
    split = json.loads((work / "pipeline" / "split.json").read_text())
    assert split["signal"] == "likelihood"
    assert split["counts"]["easy"] > 0 and split["counts"]["hard"] > 0
    report = json.loads((work / "split" / "difficulty.json").read_text())
    assert report["files"] == [str(data / "train.jsonl")]
    easy, hard = profiles(work / "split" / "easy.jsonl"), profiles(work / "split" / "hard.jsonl")
    assert easy | hard == train_profiles

    # SFT read easy, GRPO hard, both as the train split; no test profile anywhere.
    sft = json.loads((work / "sft" / "data.json").read_text())
    grpo = json.loads((work / "grpo" / "data.json").read_text())
    assert sft["split"] == grpo["split"] == "train"
    assert sft["files"] == [str(work / "split" / "easy.jsonl")]
    assert grpo["files"] == [str(work / "split" / "hard.jsonl")]
    assert sft["dialogues"] == split["counts"]["easy"]
    assert grpo["dialogues"] == split["counts"]["hard"]
    for stage in (sft, grpo):
        assert stage["train"]["examples"] > 0
    # The examples themselves: what the stages' own loaders give for these settings.
    from kardia_jax.config_files import load_config
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.pipeline.stages import Pipeline
    from kardia_jax.rl.grpo import load_grpo_data
    from kardia_jax.train.sft import load_sft_data

    config = load_config(TINY, [f"--config.data_path={data}", f"--config.tokenizer={tokenizer}"])
    p = Pipeline(config, str(work), log=lambda s: None)
    tok = load_tokenizer(tokenizer)
    sft_train, sft_held, _ = load_sft_data(p.sft_config().data, tok)
    grpo_cfg = p.grpo_config()
    grpo_train, grpo_held, _ = load_grpo_data(grpo_cfg.data, tok, grpo_cfg.select)
    seen = [e.dialogue for e in sft_train + sft_held + grpo_train + grpo_held]
    assert len(sft_train) + len(sft_held) > 0 and len(grpo_train) > 0
    assert {d.profile_key for d in seen} <= train_profiles
    assert not {d.profile_key for d in seen} & test_profiles
    assert {d.profile_key for d in (e.dialogue for e in sft_train + sft_held)} <= easy
    assert {d.profile_key for d in (e.dialogue for e in grpo_train + grpo_held)} <= hard

    # GRPO names its best checkpoint; the final policy is it.
    grpo_mark = json.loads((work / "pipeline" / "grpo.json").read_text())
    assert grpo_mark["best_step"] >= 1 and "best_score" in grpo_mark
    assert (work / "grpo" / "hf" / "config.json").is_file()
    assert (work / "grpo" / "last" / "hf" / "config.json").is_file()

    # Eval: only test turns, the same ones for Base, SFT and Kardia-R1.
    results = json.loads((work / "eval" / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["Base", "SFT", "Kardia-R1"]
    ids = None
    for slug in ("base", "sft", "kardia-r1"):
        record = json.loads((work / "eval" / slug / "data.json").read_text())
        assert record["split"] == "test" and record["files"] == [str(data / "test.jsonl")]
        rows = (work / "eval" / slug / "completions.jsonl").read_text().splitlines()
        row_ids = sorted(json.loads(x)["id"] for x in rows)
        assert len(row_ids) == 8 and all(i.startswith("test.jsonl:") for i in row_ids)
        assert ids in (None, row_ids)
        ids = row_ids
    table = (work / "eval" / "results.md").read_text()
    assert all(f"| {name} " in table for name in ("Base", "SFT", "Kardia-R1"))
    assert "Emotion Acc" in table


def test_checkpoint_specs_are_checked(tmp_path):
    assert resolve_checkpoint("", "policy") is None
    with pytest.raises(ConfigError, match=r"judge='.*nowhere': not a Hugging Face checkpoint"):
        resolve_checkpoint(str(tmp_path / "nowhere"), "judge")


def test_unknown_stage_is_refused_before_anything_runs(tmp_path):
    from kardia_jax.pipeline import pipeline_config

    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['sfft'\]"):
        run_pipeline(pipeline_config(), str(tmp_path), stages=("validate", "sfft"))
    assert not any(tmp_path.iterdir())


def test_a_torn_stage_marker_counts_as_not_done(tmp_path):
    from kardia_jax.pipeline import pipeline_config

    p = Pipeline(pipeline_config(), str(tmp_path), log=lambda s: None)
    p.mark("sft", {"step": 3})
    assert p.done("sft") == {"step": 3}
    (tmp_path / "pipeline" / "sft.json").write_text('{"step": ')
    assert p.done("sft") is None


def test_the_evaluation_judge_being_the_training_judge_is_said(tmp_path):
    from kardia_jax.models import ModelConfig, save_hf_model
    from kardia_jax.pipeline import pipeline_config
    from tests.rewards.helpers import numpy_model

    judge, other = str(tmp_path / "judge"), str(tmp_path / "other")
    cfg = ModelConfig(
        family="llama",
        vocab_size=64,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
    )
    for d in (judge, other):
        save_hf_model(numpy_model(cfg), d)
    c = pipeline_config()
    c.judge = judge
    p = Pipeline(c, str(tmp_path / "w"), log=lambda s: None)
    assert "the evaluation judge is the training judge" in p.judge_warning()
    for eval_judge in (other, "openai:gpt-5-mini"):
        c.eval_judge = eval_judge
        assert p.judge(for_eval=True) == eval_judge and p.judge_warning() is None
    c.eval_judge = judge + "/"  # the same dir, spelt differently
    assert p.judge_warning() is not None
