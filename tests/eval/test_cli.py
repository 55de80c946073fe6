"""`kardia-jax eval` end to end on a tiny random policy with a real `RubricJudge`
(a tiny checkpoint and a short rubric file), then `kardia-jax report` rebuilding the
page with training curves; and the render script's screenshot, checked (tests/browser.py),
when chromium exists."""

import json
import os
import subprocess
import sys

from kardia_jax import cli
from kardia_jax.rewards.rubric import DIMENSIONS

from .. import browser
from ..rewards.helpers import TEST_RUBRIC_TEXT, marker_model
from ..train.conftest import run_cli
from .conftest import EVAL_TINY, REPO
from .test_report import SFT_LOG, log

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def test_eval_and_report_commands(tmp_path, tiny_policy, capsys):
    judge = str(tmp_path / "judge")
    marker_model(judge)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(TEST_RUBRIC_TEXT)
    log(str(tmp_path / "sft"), {SFT_LOG: {"loss": [5.0, 4.0, 3.5]}})
    work = tmp_path / "eval"
    proc = run_cli(
        [
            "eval",
            "--config",
            EVAL_TINY,
            "--model",
            tiny_policy,
            "--judge",
            judge,
            "--data",
            "sample:test",
            "--workdir",
            str(work),
            "--sft",
            str(tmp_path / "sft"),
            "--config.eval.limit=4",
            "--config.eval.max_new_tokens=8",
            "--config.eval.bootstrap=100",
            f"--config.judge.rubric={rubric}",
        ],
        env_extra=ONE_DEVICE,
    )
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "emotion accuracy" in out and str(work / "report.html") in out
    r = json.loads((work / "results.json").read_text())
    assert r["counts"]["examples"] == 4 and r["counts"]["generated_this_run"] == 4
    assert r["rubric"]["scored"] and r["rubric"]["judge"].startswith(judge)
    for d in DIMENSIONS:  # real judge scores: expected values strictly inside (1, 5)
        assert 1.0 < r["rubric"]["dimensions"][d]["mean"] < 5.0
    scores = [json.loads(x) for x in (work / "judge_scores.jsonl").read_text().splitlines()]
    assert len(scores) == 4 and {s["judge"] for s in scores} == {r["rubric"]["judge"]}
    assert "| **ours** (" in (work / "results.md").read_text()
    html = (work / "report.html").read_text()
    assert "<svg" in html and "SFT loss" in html and "GRPO: no log folder given" in html

    # In-process through the same dispatcher (no model is loaded by either).
    out_html = tmp_path / "again.html"
    argv = ["report", "--eval", str(work), "--sft", str(tmp_path / "sft"), "--out", str(out_html)]
    assert cli.main(argv) == 0
    assert out_html.read_text() == html  # same inputs, same page
    assert cli.main(["eval", "--config", EVAL_TINY, "--workdir", str(tmp_path / "x")]) == 2
    assert "pass --model DIR" in capsys.readouterr().err


def test_render_script_screenshot(tmp_path):
    browser.chromium_or_skip()
    png = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "render_report.py"),
            "--demo",
            str(tmp_path / "demo"),
            "--out",
            str(png),
            "--height",
            "2000",
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    # --check: drawn, bar chart and curves in view, nothing run or fetched.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-2:] == [str(png), "checked: 0 problem(s)"], proc.stdout
    assert browser.decode_png(png.read_bytes()).shape == (2000, 1200, 3)
