"""A CPU host with libtpu installed (the `tpu` extra): every command runs on CPU with
no libtpu, absl or TPU-init lines in its output, and `compile-check --topology` still
builds the TPU slice; a user's own settings win (kardia_jax/host.py)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from kardia_jax import host

LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_cpu_host_with_libtpu = pytest.mark.skipif(
    not LIBTPU or host.tpu_attached(), reason="needs libtpu installed on a machine without TPU"
)

# What libtpu and jax print when they probe for chips that are not there.
NOISE = (
    "TPU_ACCELERATOR_TYPE",
    "TPU_WORKER_HOSTNAMES",
    "InitGoogle",
    "libtpu",
    "Failed to find host bounds",
    "jellyfish",
    "Unable to initialize backend",
    "Platform 'tpu'",
    "E0000",
    "W0000",
)
SETTINGS = (*host._LIBTPU_HOST_ENV, "JAX_PLATFORMS", "TPU_LIBRARY_PATH")


def run_cli(*args, env_extra=None, timeout=600):
    """The CLI in a fresh process, with none of the settings under test inherited
    (pytest's own conftest sets JAX_PLATFORMS)."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "kardia_jax.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def noise_in(output):
    return [line for line in output.splitlines() if any(n in line for n in NOISE)]


def test_settings_only_where_libtpu_has_no_chip(monkeypatch):
    monkeypatch.setattr(host, "tpu_attached", lambda: False)
    monkeypatch.setattr(host, "_libtpu_installed", lambda env: True)
    env = {}
    applied = host.quiet_cpu_host(env)
    assert env == applied and env["JAX_PLATFORMS"] == "cpu"
    assert env["ALLOW_MULTIPLE_LIBTPU_LOAD"] == "1" and env["TPU_WORKER_HOSTNAMES"]

    # The user's own values win, one by one.
    env = {"JAX_PLATFORMS": "tpu", "TPU_ACCELERATOR_TYPE": "v5p-8"}
    host.quiet_cpu_host(env)
    assert env["JAX_PLATFORMS"] == "tpu" and env["TPU_ACCELERATOR_TYPE"] == "v5p-8"

    # A machine with a TPU, or without libtpu, is left exactly as it was.
    monkeypatch.setattr(host, "tpu_attached", lambda: True)
    env = {}
    assert host.quiet_cpu_host(env) == {} and env == {}
    monkeypatch.setattr(host, "tpu_attached", lambda: False)
    monkeypatch.setattr(host, "_libtpu_installed", lambda env: False)
    assert host.quiet_cpu_host(env) == {} and env == {}


def test_a_visible_gpu_keeps_jax_platform_choice(monkeypatch):
    monkeypatch.setattr(host, "tpu_attached", lambda: False)
    monkeypatch.setattr(host, "_libtpu_installed", lambda env: True)
    monkeypatch.setattr(host, "_GPU_DEVICE_NODES", (os.devnull,))
    env = {}
    host.quiet_cpu_host(env)
    assert "JAX_PLATFORMS" not in env and env["TPU_WORKER_HOSTNAMES"] == "localhost"


def test_tpu_attached_reads_device_nodes(monkeypatch):
    seen = []
    monkeypatch.setattr(
        host.glob,
        "glob",
        lambda pattern: seen.append(pattern) or (["/dev/vfio/0"] if "vfio" in pattern else []),
    )
    assert host.tpu_attached()
    assert "/dev/vfio/[0-9]*" in seen


@needs_cpu_host_with_libtpu
def test_without_the_settings_libtpu_is_noisy():
    """The reference for the tests below: a bare jax start on this host prints
    libtpu's probe lines, so their absence there is the fix, not a quiet libtpu."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # another process may hold libtpu's lockfile
    proc = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert noise_in(proc.stdout + proc.stderr)


@needs_cpu_host_with_libtpu
@pytest.mark.parametrize("args", [["--help"], ["data", "validate", "sample"]])
def test_commands_are_quiet(args):
    rc, output = run_cli(*args)
    assert rc == 0, output
    assert noise_in(output) == []


@needs_cpu_host_with_libtpu
@pytest.mark.slow
def test_sft_steps_are_quiet_and_run_on_cpu(tmp_path):
    rc, output = run_cli(
        "sft",
        "--config",
        "configs/sft_tiny.py",
        "--workdir",
        str(tmp_path),
        "--config.train.steps=1",
        "--config.checkpoint.every=0",
        # One program (one bucket, no held-out pass): a quarter of the default's time.
        "--config.data.heldout_fraction=0",
        "--config.data.buckets=(512,)",
    )
    assert rc == 0, output
    assert noise_in(output) == []
    assert (tmp_path / "train_log.jsonl").stat().st_size > 0


@needs_cpu_host_with_libtpu
@pytest.mark.slow
def test_compile_check_on_a_topology_is_quiet():
    rc, output = run_cli(
        "compile-check", "--config", "configs/sft_tiny.py", "--topology", "v5e:2x2", "--json"
    )
    assert rc == 0, output
    assert noise_in(output) == []
    result = json.loads(output)  # nothing but the JSON object: no line of noise either
    assert (result["platform"], result["device_kind"]) == ("tpu", "TPU v5 lite")


@needs_cpu_host_with_libtpu
def test_a_users_jax_platforms_wins():
    """JAX_PLATFORMS=tpu on a host without chips fails as jax makes it fail."""
    code = "from kardia_jax import host; host.quiet_cpu_host(); import jax; jax.devices()"
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update({"JAX_PLATFORMS": "tpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "Unable to initialize backend 'tpu'" in proc.stderr
