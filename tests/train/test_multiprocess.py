"""The path TPU pods take: several processes joined by `jax.distributed` (here two
on localhost, CPU collectives over gloo), each feeding its rows of every batch."""

import json
import os
import socket

import numpy as np
from safetensors.numpy import load_file

from .conftest import run_cli, tiny_overrides
from .test_sft import TINY, read_log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path, small_tokenizer):
    args = tiny_overrides(
        small_tokenizer,
        **{"train.steps": 3, "checkpoint.every": 0, "export_hf": True, "eval.every": 0},
    )
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    proc = run_cli(
        ["sft", "--config", TINY, "--workdir", single, *args],
        env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out

    port = _free_port()
    procs = [
        run_cli(
            [
                "sft",
                "--config",
                TINY,
                "--workdir",
                multi,
                *args,
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    summary = json.loads(outs[0].strip().splitlines()[-1])
    assert summary["step"] == 3

    a, b = read_log(single), read_log(multi)
    assert [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"] and x["seq_len"] == y["seq_len"]
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (x, y)
    fa = load_file(os.path.join(single, "hf", "model.safetensors"))
    fb = load_file(os.path.join(multi, "hf", "model.safetensors"))
    for name in fa:
        np.testing.assert_allclose(fa[name], fb[name], atol=1e-5, rtol=0, err_msg=name)
