"""The end-to-end pipeline on configs/pipeline_tiny.py: every stage runs, the table
and the report come out (and render in headless Chromium, charts drawn, nothing run
or fetched), and a run killed during GRPO resumes GRPO, not SFT."""

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


def pipeline_args(workdir, tokenizer):
    return [
        "pipeline",
        "--config",
        TINY,
        "--workdir",
        str(workdir),
        f"--config.tokenizer={tokenizer}",
        "--config.sft.model.vocab_multiple=8",
        "--config.grpo.model.vocab_multiple=8",
    ]


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
    work = tmp_path / "run"
    proc = run_cli(pipeline_args(work, small_tokenizer), ONE_DEVICE)
    grpo_ckpt = work / "grpo" / "checkpoints" / "2"
    deadline = time.time() + 240
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

    proc = run_cli(pipeline_args(work, small_tokenizer), ONE_DEVICE)
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
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["counts"]["examples"] == 8
    assert "Emotion Acc" in (work / "eval" / "results.md").read_text()
    html = (work / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script src=" not in html
    assert f"report: {work / 'report.html'}" in out
    check_report_in_browser(work / "report.html", tmp_path / "browser")

    # A third run has nothing left to do.
    proc = run_cli(pipeline_args(work, small_tokenizer), ONE_DEVICE)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert out.count("done earlier, skipped") == 6
    print(first, out)


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
