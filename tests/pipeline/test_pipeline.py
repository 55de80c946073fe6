"""The end-to-end pipeline on configs/pipeline_tiny.py: every stage runs, the table
and the report come out, and a run killed during GRPO resumes GRPO, not SFT."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from kardia_jax.errors import ConfigError
from kardia_jax.pipeline.stages import Pipeline, resolve_checkpoint, run_pipeline

from ..train.conftest import REPO, run_cli

TINY = os.path.join(REPO, "configs", "pipeline_tiny.py")
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
