"""The SFT driver's held-out loss log, WORKDIR/eval_log.jsonl (the report's held-out
curve): one {step, loss} row per evaluation, the last one the loss the run returns,
and rows past a resumed checkpoint dropped, so a resumed run's log equals an
uninterrupted one."""

import json
import math
import os
import shutil

from kardia_jax.cli import main

from .conftest import tiny_overrides
from .test_sft import TINY

SETTINGS = {"train.steps": 6, "checkpoint.every": 2, "eval.every": 2}


def sft(workdir, small_tokenizer, capsys) -> tuple[dict, str]:
    """The run's result and its console output."""
    args = ["sft", "--config", TINY, "--workdir", str(workdir)]
    capsys.readouterr()
    assert main(args + tiny_overrides(small_tokenizer, **SETTINGS)) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1]), out


def eval_log(workdir) -> list[dict]:
    with open(os.path.join(workdir, "eval_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_held_out_loss_rows_and_resume(tmp_path, small_tokenizer, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result, _ = sft(straight, small_tokenizer, capsys)
    rows = eval_log(straight)
    # Every eval.every steps, and once more at the end (step 6 twice).
    assert [r["step"] for r in rows] == [2, 4, 6, 6]
    assert all(set(r) == {"step", "loss"} and math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] == result["eval_loss"]
    assert rows[0]["loss"] != rows[1]["loss"]  # the policy changed between evaluations

    # A run killed after its step-2 checkpoint had logged more: resumed, it drops the
    # rows past step 2 and writes them again, equal to the uninterrupted run's.
    shutil.copytree(straight, resumed)
    for step in ("4", "6"):
        shutil.rmtree(resumed / "checkpoints" / step)
    with open(resumed / "eval_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 5, "loss": 99.0}) + "\n")
    _, out = sft(resumed, small_tokenizer, capsys)
    assert "resumed from step 2" in out, out
    assert eval_log(resumed) == rows
