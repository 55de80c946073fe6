"""The fault-injection suite's means: seeded choices, the tiny SFT and GRPO runs as
a user starts them (`python -m kardia_jax.cli` in a child, so a fault can be a real
SIGKILL), the faults themselves, and the record each test leaves for the summary
(tests/conftest.py prints it at the end of the session).

Every run is compared with an uninterrupted run of the same command: the exported
weights bit for bit, and the logs and ledgers row for row (timings left out)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import time

import numpy as np
from safetensors.numpy import load_file

from tests.train.conftest import run_cli, tiny_overrides
from tests.train.test_restore_mismatch import tree_hash  # noqa: F401 - the suite's one

SEED = int(os.environ.get("KARDIA_JAX_FAULT_SEED", "0"))
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "kardia_jax", "configs")
SFT_CONFIG = os.path.join(CONFIGS, "sft_tiny.py")
GRPO_CONFIG = os.path.join(CONFIGS, "grpo_tiny.py")
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
SAVED = re.compile(r"SIGTERM: saved step (\d+) \((\w+)\); exiting")
TIMINGS = ("step_time_s", "tokens_per_s", "mfu", "time", "elapsed")


def rng(name: str) -> random.Random:
    """The suite's seed and the fault's name: each fault draws its own choices, the
    same ones whichever tests run."""
    return random.Random(f"{SEED}:{name}")


def record(request, fault: str, injected: str, outcome: str | None = None, detail: str = ""):
    """Notes the fault on the test's report: `injected` before the fault (a test that
    fails after it shows as not survived), the outcome ('survived' or 'refused') once
    every assertion has passed."""
    row = {"fault": fault, "injected": injected, "outcome": outcome, "detail": detail}
    request.node.user_properties = [
        p for p in request.node.user_properties if not (p[0] == "fault" and p[1]["fault"] == fault)
    ]
    request.node.user_properties.append(("fault", row))


# -- runs --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(args: list[str], *, pair: bool = False, env: dict | None = None, module=None):
    """The command in one child process, or in two joined by jax.distributed (two CPU
    devices each); `module` is an entry point that injects a fault first."""
    kw = {"module": module} if module else {}
    if not pair:
        return [run_cli(args, env, **kw)]
    port = free_port()
    extra = ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    return [
        run_cli([*args, *extra, "--process-id", str(i)], {**TWO_DEVICES, **(env or {})}, **kw)
        for i in range(2)
    ]


def finish(procs, timeout: float = 1800) -> tuple[list[int], list[str]]:
    # A hang guard, not a time limit: a tiny run takes under a minute, but CI's machine
    # can be oversubscribed many times over (a rerun once took past 600 s at load 40).
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


def run(args: list[str], *, pair: bool = False, env: dict | None = None, module=None) -> list[str]:
    codes, outs = finish(start(args, pair=pair, env=env, module=module))
    assert all(c == 0 for c in codes), outs
    return outs


def sft_args(workdir, tokenizer: str, **overrides) -> list[str]:
    base = {
        "train.steps": 8,
        "checkpoint.every": 2,
        "checkpoint.max_to_keep": 8,
        "export_hf": True,
        "eval.every": 4,
    }
    base.update(overrides)
    return ["sft", "--config", SFT_CONFIG, "--workdir", str(workdir)] + tiny_overrides(
        tokenizer, **base
    )


def grpo_args(workdir, policy: str, tokenizer: str, **overrides) -> list[str]:
    base = {
        "model.path": policy,
        "data.tokenizer": tokenizer,
        "model.vocab_multiple": 8,
        "train.steps": 6,
        "checkpoint.every": 1,
        "checkpoint.max_to_keep": 6,
        "rollout.max_new_tokens": 16,
        "select.every": 0,
        # Rewards that differ between completions: every update moves the policy.
        "reward.fn": "tests.rl.toy_rewards:planted",
    }
    base.update(overrides)
    return ["grpo", "--config", GRPO_CONFIG, "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in base.items()
    ]


# -- what a run left ---------------------------------------------------------


def checkpoints(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def rows(path) -> list[dict]:
    """A log's rows without the fields that time the run."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_jsonl(path)]


def same_weights(a_dir, b_dir) -> None:
    a = load_file(os.path.join(a_dir, "hf", "model.safetensors"))
    b = load_file(os.path.join(b_dir, "hf", "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


SFT_LOGS = {"train_log.jsonl": None, "eval_log.jsonl": None}
# GRPO's log also holds timings under many names: the columns that carry the run.
GRPO_LOGS = {"rollouts.jsonl": None, "grpo_log.jsonl": ("step", "loss", "kl", "reward/total")}


def same_run(straight, other, logs: dict) -> None:
    """`other` ended as the uninterrupted `straight` did: weights bit for bit, and
    every log row for row (all fields but timings, or the columns named)."""
    same_weights(straight, other)
    for name, keys in logs.items():
        a, b = (rows(os.path.join(w, name)) for w in (straight, other))
        if keys:
            a, b = ([[r.get(k) for k in keys] for r in x] for x in (a, b))
        assert b == a, name


# -- faults ------------------------------------------------------------------


def as_if_killed_after(straight, workdir, step: int) -> None:
    """`workdir` as a run killed just after checkpoint `step` was complete leaves it:
    the straight run's files without the later checkpoints and the export (the logs
    keep rows past the checkpoint, as a kill leaves them)."""
    shutil.copytree(straight, workdir)
    for s in checkpoints(workdir):
        if s > step:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(s)))
    shutil.rmtree(os.path.join(workdir, "hf"), ignore_errors=True)


def files_of(step_dir) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names)


def corrupt(step_dir, how: str, r: random.Random) -> str:
    """Damages one file of a checkpoint, drawn by `r`: 'truncated' cuts any file at a
    random byte, 'deleted' removes any file, 'garbage' overwrites a few random bytes
    inside one of the array data files (the damage orbax itself reads back without
    complaint). Returns what it did."""
    files = [f for f in files_of(step_dir) if os.path.getsize(f) > 1]
    name = lambda f: os.path.relpath(f, step_dir)  # noqa: E731
    if how == "truncated":
        victim = r.choice(files)
        size = os.path.getsize(victim)
        cut = r.randrange(0, size)
        os.truncate(victim, cut)
        return f"{name(victim)} cut from {size} to {cut} bytes"
    if how == "deleted":
        victim = r.choice(files)
        os.remove(victim)
        return f"{name(victim)} deleted"
    if how == "garbage":
        data = [f for f in files if "/d/" in f and os.path.getsize(f) > 4096]
        victim = r.choice(data)
        size = os.path.getsize(victim)
        n = r.randrange(4, 64)
        at = r.randrange(size // 8, size - n)
        with open(victim, "r+b") as f:
            f.seek(at)
            f.write(bytes(r.randrange(256) for _ in range(n)))
        return f"{n} random bytes at offset {at} of {name(victim)}"
    raise ValueError(how)


def tear(path, r: random.Random) -> str:
    """Cuts the file's last line at a random byte, as a kill in mid-write leaves it."""
    with open(path, "rb") as f:
        data = f.read()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = r.randrange(last + 1, len(data) - 1)
    with open(path, "wb") as f:
        f.write(data[:cut])
    return f"{os.path.basename(path)} cut at byte {cut} of {len(data)}"


def wait_for(cond, procs, timeout: float = 480, poll: float = 0.01):
    deadline = time.time() + timeout
    while not cond():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, [p.stdout.read() for p in dead]
        assert time.time() < deadline, "timed out waiting for the fault's moment"
        time.sleep(poll)


def log_rows(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def kill9(procs) -> None:
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
