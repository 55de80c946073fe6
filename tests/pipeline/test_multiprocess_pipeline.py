"""The pipeline on a pod's path: two processes of two CPU devices joined by
`jax.distributed` (gloo), against one process of four. One pair of runs of
configs/pipeline_tiny.py serves the end-to-end checks (one writer per file, the
same table, with a tiny real evaluation judge) and GRPO's parity (losses and rollout ledger over 3 steps, with a reward
that varies, so the updates move the policy); short runs show that every command
joins the run before anything starts a JAX backend and that one process's failed
check stops both with its message."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys

import pytest

from kardia_jax.pipeline.stages import STAGES

from ..train.conftest import REPO, run_cli
from .test_pipeline import pipeline_args

FOUR = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
TWO = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
GRPO_STEPS = 3
SFT_STEPS = 4
# Tiny settings for both runs. A reward that differs between distinct completions
# gives GRPO non-zero advantages (the tiny policy never earns the format reward).
SETTINGS = (
    f"--config.sft.train.steps={SFT_STEPS}",
    "--config.sft.checkpoint.every=2",
    f"--config.grpo.train.steps={GRPO_STEPS}",
    "--config.grpo.reward.fn=tests.rl.toy_rewards:planted",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def distributed(port: int, pid: int, n: int = 2) -> list[str]:
    return [
        "--coordinator",
        f"localhost:{port}",
        "--num-processes",
        str(n),
        "--process-id",
        str(pid),
    ]


@dataclasses.dataclass
class Runs:
    one: str  # the workdir of 1 process x 4 devices
    two: str  # 2 processes x 2 devices
    outs: list[str]  # output of process 0 and 1 of the two-process run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_tokenizer) -> Runs:
    from tests.rewards.helpers import TEST_RUBRIC_TEXT, marker_model

    base = tmp_path_factory.mktemp("multiprocess_pipeline")
    one, two = str(base / "one"), str(base / "two")
    # A tiny real judge for the evaluation, so that judging runs over the mesh too.
    marker_model(str(base / "judge"))
    (base / "rubric.txt").write_text(TEST_RUBRIC_TEXT)
    judge = (
        f"--config.eval_judge={base / 'judge'}",
        f"--config.eval.judge.rubric={base / 'rubric.txt'}",
    )
    settings = (*SETTINGS, *judge)
    port = free_port()
    # All three processes at once: the single run overlaps the pair's waits.
    single = run_cli(pipeline_args(one, small_tokenizer, *settings), FOUR)
    pair = [
        run_cli(pipeline_args(two, small_tokenizer, *settings, *distributed(port, i)), TWO)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in pair]
    out = single.communicate(timeout=900)[0]
    assert single.returncode == 0, out
    assert [p.returncode for p in pair] == [0, 0], outs
    return Runs(one, two, outs)


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_two_processes_run_the_pipeline_once_with_the_table_of_one(runs):
    two, one = runs.two, runs.one
    # Every stage marked done, and each shared file written by one process: no
    # temporary file or folder left behind by writers racing on one name.
    assert sorted(os.listdir(os.path.join(two, "pipeline"))) == sorted(f"{s}.json" for s in STAGES)
    left = [
        os.path.join(d, name)
        for d, dirs, files in os.walk(two)
        for name in files + dirs
        if name.endswith(".tmp") or ".tmp-" in name or ".old-" in name or "write-check" in name
    ]
    assert left == []
    results = [
        os.path.relpath(os.path.join(d, f), two)
        for d, _, files in os.walk(two)
        for f in files
        if f in ("results.json", "report.html")
    ]
    assert sorted(results) == [
        "eval/kardia-r1/results.json",
        "eval/results.json",
        "eval/sft/results.json",
        "report.html",
    ]
    for out in runs.outs:  # both processes finished every stage
        assert f"report: {os.path.join(two, 'report.html')}" in out
    # Appended logs: each row once (two writers would double them).
    steps = [r["step"] for r in read_jsonl(os.path.join(two, "sft", "train_log.jsonl"))]
    assert steps == list(range(1, SFT_STEPS + 1))
    for slug in ("sft", "kardia-r1"):
        a = read_jsonl(os.path.join(one, "eval", slug, "completions.jsonl"))
        b = read_jsonl(os.path.join(two, "eval", slug, "completions.jsonl"))
        assert len(b) == len({r["id"] for r in b}) == 8
        scores = read_jsonl(os.path.join(two, "eval", slug, "judge_scores.jsonl"))
        assert sorted(r["id"] for r in scores) == sorted(r["id"] for r in b)  # each once
        # Greedy answers: the same text for every test turn.
        assert {r["id"]: r["completion"] for r in a} == {r["id"]: r["completion"] for r in b}

    # The table: the eval's own figures, exact for counts (tests/eval compare them
    # with pytest.approx), rubric means to 1e-6 (tests/eval/test_compare.py).
    ra, rb = (read_json(os.path.join(w, "eval", "results.json")) for w in (one, two))
    assert [r["name"] for r in rb["rows"]] == ["SFT", "Kardia-R1"]
    for x, y in zip(ra["rows"], rb["rows"], strict=True):
        for key in ("examples", "emotion_accuracy", "emotion_accuracy_ci95"):
            assert x[key] == pytest.approx(y[key]), key
        assert x["format_failure_rate"] == pytest.approx(y["format_failure_rate"])
        assert y["rubric"] is not None and set(y["rubric"]) == set(x["rubric"])
        assert y["rubric"] == pytest.approx(x["rubric"], abs=1e-6)
    for x, y in zip(
        read_jsonl(os.path.join(one, "sft", "train_log.jsonl")),
        read_jsonl(os.path.join(two, "sft", "train_log.jsonl")),
        strict=True,
    ):
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (x, y)  # as tests/train/test_multiprocess


def test_grpo_on_two_processes_matches_one_process_for_three_steps(runs):
    log_a = read_jsonl(os.path.join(runs.one, "grpo", "grpo_log.jsonl"))
    log_b = read_jsonl(os.path.join(runs.two, "grpo", "grpo_log.jsonl"))
    assert [r["step"] for r in log_b] == list(range(1, GRPO_STEPS + 1))
    # The updates moved the policy: the comparison is not of zeros.
    assert all(r["advantage/abs_max"] > 0 and r["grad_norm"] > 0 for r in log_b)
    for x, y in zip(log_a, log_b, strict=True):
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "reward/total"):
            assert abs(x[key] - y[key]) <= 1e-5, (key, x["step"], x[key], y[key])
    ledger_a = read_jsonl(os.path.join(runs.one, "grpo", "rollouts.jsonl"))
    ledger_b = read_jsonl(os.path.join(runs.two, "grpo", "rollouts.jsonl"))
    assert len(ledger_b) == len(ledger_a) > 0
    for x, y in zip(ledger_a, ledger_b, strict=True):
        for key in ("step", "example", "prompt", "completion", "finish_reason"):
            assert x[key] == y[key], (key, x, y)
        assert y["advantage"] == pytest.approx(x["advantage"], abs=1e-5)
        assert y["reward/total"] == pytest.approx(x["reward/total"], abs=1e-6)


@pytest.mark.parametrize("command", ["sft", "grpo", "eval", "pipeline"])
def test_every_command_joins_the_run_before_anything_starts_a_backend(tmp_path, command):
    """jax refuses `jax.distributed.initialize` once a backend has started: a command
    that touched one first would die with that RuntimeError (the last case shows the
    check sees it) instead of reaching its own one-line error about the config file."""
    args = [command, "--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "w")]
    args += distributed(free_port(), 0, n=1)
    proc = run_cli(args, TWO)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    assert f"kardia-jax {command}: error:" in out and "missing.py" in out, out
    assert "initialize() must be called before" not in out


def test_a_backend_started_first_is_caught(tmp_path):
    """The check above fails when something starts a backend before the command joins."""
    import subprocess

    code = (
        "import sys, jax; jax.devices(); from kardia_jax.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["pipeline", "--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path)]
    env = dict(os.environ, **TWO)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, *distributed(free_port(), 0, n=1)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "initialize() must be called before" in proc.stdout + proc.stderr


def test_a_check_failing_on_one_process_stops_both_with_its_message(tmp_path, small_tokenizer):
    """Process 1 alone is given a data folder that does not exist: both processes stop
    at the preflight, exit 2 and print the same line, naming process 1."""
    port, work = free_port(), tmp_path / "w"
    procs = []
    for i in range(2):
        extra = [f"--config.data_path={tmp_path / 'nowhere'}"] if i == 1 else []
        args = pipeline_args(work, small_tokenizer, *extra, *distributed(port, i))
        procs.append(run_cli(args, TWO))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    lines = [
        [x for x in out.splitlines() if x.startswith("kardia-jax pipeline: error:")] for out in outs
    ]
    assert lines[0] == lines[1] and len(lines[0]) == 1, outs
    assert "process 1 of 2:" in lines[0][0] and "nowhere" in lines[0][0]
    assert not (work / "pipeline").exists()  # no stage ran


_reward_calls = 0


def fails_on_process_one(texts, contexts, gold):
    """A GRPO reward (`reward.fn`) that fails on process 1 alone, at its second call:
    in the middle of a stage, with process 0 heading into the next collective."""
    import jax
    import numpy as np

    from kardia_jax.errors import DataError

    global _reward_calls
    _reward_calls += 1
    if jax.process_index() == 1 and _reward_calls == 2:
        raise DataError("injected: the reward failed on process 1")
    return {"total": np.zeros(len(texts), np.float32)}


def test_a_process_failing_inside_a_stage_stops_both_at_once(tmp_path):
    """Process 1 fails between two collectives of GRPO: it prints its error and ends
    at once (not after jax's 300 s shutdown barrier), and process 0, whose collective
    then fails, ends too, saying another process stopped."""
    import time

    from tests.rl.conftest import (
        DIALOGUES,
        RL_TOKENS,
        driver_args,
        short_record,
        write_jsonl,
        write_policy,
    )
    from tests.train.conftest import build_small_tokenizer

    tok = build_small_tokenizer(str(tmp_path / "tok"), RL_TOKENS)
    data = write_jsonl(
        tmp_path / "short.jsonl", [short_record(i, *d) for i, d in enumerate(DIALOGUES)]
    )
    policy = write_policy(str(tmp_path / "policy"), tok)
    args = driver_args(
        tmp_path / "w",
        policy,
        tok,
        data,
        3,
        **{"reward.fn": f"{__name__}:fails_on_process_one", "rollout.global_batch": 8},
    )
    port = free_port()
    procs = [run_cli([*args, *distributed(port, i)], TWO) for i in range(2)]
    ended = [None, None]
    deadline = time.time() + 400
    while None in ended and time.time() < deadline:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.1)
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert None not in ended, outs
    assert procs[1].returncode == 2 and procs[0].returncode != 0, outs
    assert "kardia-jax grpo: error: injected: the reward failed on process 1" in outs[1]
    assert "kardia-jax grpo: error:" in outs[0] and "another process" in outs[0], outs[0]
    # Well inside jax's heartbeat (100 s) and shutdown (300 s) timeouts.
    assert abs(ended[0] - ended[1]) < 30, ended
