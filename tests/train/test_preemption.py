"""Preemption on a pod's path: SIGTERM to process 1 of 2 (jax.distributed over gloo)
during SFT, then during GRPO. Both processes save the same step and exit 0 naming it,
and the rerun on 2 processes resumes there and ends with the parameters and logs of
an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from .conftest import run_cli, tiny_overrides
from .test_sft import TINY

GRPO = os.path.join(os.path.dirname(TINY), "grpo_tiny.py")
TWO = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
SAVED = re.compile(r"SIGTERM: saved step (\d+) \((\w+)\); exiting")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(args: list[str]):
    port = _free_port()
    return [
        run_cli(
            [
                *args,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            TWO,
        )
        for i in range(2)
    ]


def _run_pair(args: list[str]) -> list[str]:
    procs = _start_pair(args)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


def _checkpoints(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _preempt_pair(args: list[str], workdir: str, after: int) -> int:
    """Runs the pair until checkpoint `after` is complete, sends SIGTERM to process 1
    alone, and returns the step both saved."""
    procs = _start_pair(args)
    deadline = time.time() + 480
    while after not in _checkpoints(workdir):
        assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(procs[1].pid, signal.SIGTERM)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    saved = [SAVED.findall(out) for out in outs]
    assert all(len(s) == 1 for s in saved), outs  # each process names its step once
    (step, _), (step1, _) = saved[0][0], saved[1][0]
    assert step == step1, outs  # the same step on both
    step = int(step)
    assert after < step and step in _checkpoints(workdir), (step, _checkpoints(workdir))
    print(f"\nSIGTERM to process 1 after checkpoint {after}: both saved step {step}")
    return step


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _same_weights(a_dir: str, b_dir: str) -> None:
    a = load_file(os.path.join(a_dir, "model.safetensors"))
    b = load_file(os.path.join(b_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


SFT_STEPS = 16


def test_sigterm_to_one_of_two_sft_processes_saves_one_step_on_both(tmp_path, small_tokenizer):
    args = tiny_overrides(
        small_tokenizer,
        **{
            "train.steps": SFT_STEPS,
            "checkpoint.every": 2,
            "checkpoint.max_to_keep": SFT_STEPS,
            "export_hf": True,
            "eval.every": 0,
        },
    )
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    _run_pair(["sft", "--config", TINY, "--workdir", straight, *args])

    cmd = ["sft", "--config", TINY, "--workdir", broken, *args]
    step = _preempt_pair(cmd, broken, after=2)
    assert step < SFT_STEPS
    assert not os.path.exists(os.path.join(broken, "hf"))  # stopped, not finished
    outs = _run_pair(cmd)
    assert all(f"resumed from step {step}" in out for out in outs), outs

    log = _read_jsonl(os.path.join(straight, "train_log.jsonl"))
    assert [r["step"] for r in log] == list(range(1, SFT_STEPS + 1))
    assert _read_jsonl(os.path.join(broken, "train_log.jsonl")) == log
    _same_weights(os.path.join(straight, "hf"), os.path.join(broken, "hf"))


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("sft")
    proc = run_cli(
        [
            "sft",
            "--config",
            TINY,
            "--workdir",
            str(workdir),
            *tiny_overrides(small_tokenizer, **{"train.steps": 2, "export_hf": True}),
        ]
    )
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    return str(workdir / "hf")


GRPO_STEPS = 8


def test_sigterm_to_one_of_two_grpo_processes_saves_one_step_on_both(
    tmp_path, sft_policy, small_tokenizer
):
    def args(workdir):
        return [
            "grpo",
            "--config",
            GRPO,
            "--workdir",
            workdir,
            f"--config.model.path={sft_policy}",
            f"--config.data.tokenizer={small_tokenizer}",
            "--config.model.vocab_multiple=8",
            f"--config.train.steps={GRPO_STEPS}",
            "--config.checkpoint.every=1",
            f"--config.checkpoint.max_to_keep={GRPO_STEPS}",
            "--config.rollout.max_new_tokens=16",
            "--config.select.every=0",
            # Rewards that differ between completions: the updates move the policy.
            "--config.reward.fn=tests.rl.toy_rewards:planted",
        ]

    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    _run_pair(args(straight))

    step = _preempt_pair(args(broken), broken, after=1)
    assert step < GRPO_STEPS
    outs = _run_pair(args(broken))
    assert all(f"resumed from step {step}" in out for out in outs), outs

    ledger = _read_jsonl(os.path.join(straight, "rollouts.jsonl"))
    assert len(ledger) == GRPO_STEPS * 4 * 4  # steps x prompts x group, each row once
    assert _read_jsonl(os.path.join(broken, "rollouts.jsonl")) == ledger
    a, b = (_read_jsonl(os.path.join(w, "grpo_log.jsonl")) for w in (straight, broken))
    keys = ("step", "loss", "kl", "reward/total")  # the rest holds timings
    assert [[r[k] for k in keys] for r in b] == [[r[k] for k in keys] for r in a]
    assert [r["step"] for r in a] == list(range(1, GRPO_STEPS + 1))
    _same_weights(os.path.join(straight, "hf"), os.path.join(broken, "hf"))
