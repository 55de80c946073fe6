"""`kardia-jax data validate` / `data show`: exit 0 and statistics on the bundled sample,
exit 2 with a one-line message naming file, line and field on bad data."""

from __future__ import annotations

import json
import subprocess
import sys

from kardia_jax.cli import main

from .helpers import BASE_RECORD


def test_validate_sample_prints_stats_and_exits_0(capsys):
    assert main(["data", "validate", "sample"]) == 0
    out = capsys.readouterr().out
    assert "dialogues: 42" in out and "examples (assistant turns): 329" in out
    assert "profiles: 16" in out and "MBTI types (16):" in out
    assert "emotions (32 of 32):" in out and "missing:" not in out
    assert "token lengths per example:    p50    p90    p99   p100" in out
    assert "  lonely             2  " in out
    assert out.rstrip().endswith("OK")


def test_validate_bad_file_exits_2_with_one_line(tmp_path, capsys):
    bad = dict(BASE_RECORD, emotion="meh")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(BASE_RECORD) + "\n" + json.dumps(bad) + "\n")
    assert main(["data", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kardia-jax data: error: {path}:2: field emotion: unknown emotion 'meh'"
    assert main(["data", "validate", str(path), "--mode", "skip"]) == 2
    captured = capsys.readouterr()
    assert "dialogues: 1" in captured.out and "skipped 1 record(s): unknown_emotion" in captured.out
    assert captured.err.strip().endswith("1 bad record(s) or example(s) skipped (unknown_emotion)")


def test_show_prints_prompt_and_target(capsys):
    assert main(["data", "show", "sample:test", "--index", "0", "--notation", "tags"]) == 0
    out = capsys.readouterr().out
    prompt, target = out.split(" target (loss on these) ")
    assert "<|im_start|>system\nYou are a warm" in prompt
    assert prompt.rstrip("=\n ").endswith("<|im_start|>assistant")
    assert target.strip("= \n").startswith("<understanding>")
    assert target.rstrip().endswith("</response><|im_end|>")
    assert main(["data", "show", "sample:test", "--index", "10000"]) == 2


def test_validate_runs_as_a_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "kardia_jax.cli", "data", "validate", "sample:test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dialogues: 8" in proc.stdout and proc.stdout.rstrip().endswith("OK")
