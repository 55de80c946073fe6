"""A workdir's checkpoints meet a run with other settings, or are damaged: a mismatch
is refused with one line and nothing in the workdir changes; a damaged checkpoint is
moved aside and the one before it resumes the run to the same weights."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from kardia_jax.cli import main
from kardia_jax.errors import CheckpointError

from .conftest import REPO, tiny_overrides
from .test_sft import TINY, read_log

STEPS, EVERY = 8, 2  # checkpoints 2, 4, 6, 8: three to damage, one to resume from


def sft(workdir, small_tokenizer, **overrides):
    args = ["sft", "--config", TINY, "--workdir", str(workdir)]
    base = {"train.steps": STEPS, "checkpoint.every": EVERY, "checkpoint.max_to_keep": 4}
    return main(args + tiny_overrides(small_tokenizer, **{**base, **overrides}))


def tree_hash(root) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def saved_params(workdir, step):
    state = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state")
    )
    return ocp.tree.to_flat_dict(state["params"], sep="/")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_tokenizer):
    """An uninterrupted run with the default settings (layers unscanned, clipping on)."""
    workdir = tmp_path_factory.mktemp("straight")
    assert sft(workdir, small_tokenizer) == 0
    return workdir


@pytest.fixture
def copy_of(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize(
    "override, named",
    [
        # Stacked layers: the per-layer paths of the checkpoint are gone.
        ("model.scan_layers", "params/layers/input_layernorm/scale/value: missing in checkpoint"),
        # No clip_by_global_norm in the chain: AdamW's state moves from opt_state/1 to /0.
        ("train.clip_norm", "opt_state/1/0/mu/embed_tokens/embedding/value: in checkpoint, not"),
        # A vocabulary padded to 64: same paths, other shapes.
        ("model.vocab_multiple", "shape (4176, 64) saved, (4224, 64) expected"),
    ],
)
def test_checkpoint_of_other_settings_is_refused_and_nothing_changes(
    copy_of, small_tokenizer, capsys, override, named
):
    value = {"model.scan_layers": True, "train.clip_norm": 0.0, "model.vocab_multiple": 64}
    before = tree_hash(copy_of)
    capsys.readouterr()
    assert sft(copy_of, small_tokenizer, **{override: value[override]}) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err, err
    assert f"checkpoint {copy_of}/checkpoints/8 does not match this run's state" in err
    assert named in err and "use a new workdir" in err, err
    assert "unreadable" not in captured.out
    assert tree_hash(copy_of) == before  # checkpoints, logs and data record untouched


def _largest_array_file(step_dir):
    d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def test_damaged_checkpoints_are_moved_aside_and_the_run_matches_an_uninterrupted_one(
    straight, copy_of, small_tokenizer, capsys
):
    ckpts = copy_of / "checkpoints"
    # Each is the newest when its turn comes: garbage in the tree metadata (caught
    # before any array is read), a deleted array file, a truncated one.
    with open(ckpts / "8" / "state" / "_METADATA", "wb") as f:
        f.write(b"\x93\xff garbage \x00" * 8)
    os.remove(_largest_array_file(ckpts / "6"))
    victim = _largest_array_file(ckpts / "4")
    os.truncate(victim, os.path.getsize(victim) // 2)

    capsys.readouterr()
    assert sft(copy_of, small_tokenizer) == 0
    out = capsys.readouterr().out
    for step in (8, 6, 4):
        assert f"checkpoints/{step} is unreadable" in out, out
    assert "resumed from step 2" in out
    aside = sorted(n.split(".")[0] for n in os.listdir(ckpts) if ".unreadable-" in n)
    assert aside == ["4", "6", "8"]
    assert [r["step"] for r in read_log(copy_of)] == list(range(1, STEPS + 1))

    a, b = saved_params(straight, STEPS), saved_params(copy_of, STEPS)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_no_restorable_checkpoint_names_every_one_tried(copy_of, small_tokenizer, capsys):
    ckpts = copy_of / "checkpoints"
    for step in (2, 4, 6, 8):
        os.remove(_largest_array_file(ckpts / str(step)))
    log_before = tree_hash(copy_of)["train_log.jsonl"]
    assert sft(copy_of, small_tokenizer) == 2
    err = capsys.readouterr().err
    assert "no checkpoint could be restored; tried 8 (" in err
    assert all(f"), {s} (" in err for s in (6, 4, 2)), err
    # Never a silent restart from step 0: the log is as it was.
    assert tree_hash(copy_of)["train_log.jsonl"] == log_before


def test_grpo_resume_refuses_a_mismatch_too(tmp_path, small_tokenizer):
    """GRPO resumes through the same `resume_or_init` as SFT, before it opens a log."""
    from kardia_jax.config_files import load_config
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.train.checkpoints import resume_or_init
    from kardia_jax.train.optim import make_optimizer
    from kardia_jax.train.setup import mesh_and_rules, planned_model_config

    grpo_tiny = os.path.join(os.path.dirname(TINY), "grpo_tiny.py")
    config = load_config(grpo_tiny, [f"--config.data.tokenizer={small_tokenizer}"])
    config.model.init = dict(load_config(TINY).model.init)  # a random policy: no model.path
    vocab = len(load_tokenizer(small_tokenizer))
    mesh, rules = mesh_and_rules(config)
    tx = make_optimizer(config.train, 8)

    def resume():
        cfg = planned_model_config(config.model, vocab)
        return resume_or_init(config, cfg, tx, mesh, rules, str(tmp_path))

    ckpt, _, state, _, start, _ = resume()
    assert start == 0
    ckpt.save(2, state, {}, wait=True)
    ckpt.close()
    before = tree_hash(tmp_path)

    config.model.scan_layers = True
    with pytest.raises(CheckpointError, match="params/layers/input_layernorm/scale/value"):
        resume()
    assert tree_hash(tmp_path) == before

    config.model.scan_layers = False
    ckpt, _, _, _, start, _ = resume()
    ckpt.close()
    assert start == 2


# Two processes of two CPU devices each save a sharded array at steps 1 and 2; then
# process 1 damages its own file of step 2, so only it fails to read that step.
TWO_PROCESS_CHILD = """
import os, sys
import jax, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
from kardia_jax.train.checkpoints import Checkpointer

rows = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec("d"))
def full(v):  # random: compressed, constant rows would be a few bytes on disk
    return np.random.default_rng(v).standard_normal((8, 1024), np.float32)
def state(v):
    return {"w": jax.make_array_from_callback((8, 1024), rows, lambda i: full(v)[i])}
ckpt = Checkpointer(root, async_save=False)
for step in (1, 2):
    ckpt.save(step, state(step), {"at": step}, wait=True)
if pid == 1:
    d = os.path.join(root, "2", "state", "ocdbt.process_1", "d")
    for f in os.listdir(d):
        os.truncate(os.path.join(d, f), 10)
multihost_utils.sync_global_devices("damaged")
abstract = {"w": jax.ShapeDtypeStruct((8, 1024), np.float32, sharding=rows)}
step, restored, data = ckpt.restore_latest(abstract)
exact = all(np.array_equal(s.data, full(step)[s.index]) for s in restored["w"].addressable_shards)
print("restored", step, data["at"], exact, flush=True)
ckpt.close()
"""


def test_two_processes_agree_on_a_checkpoint_only_one_of_them_can_read(tmp_path):
    """Process 0 reads step 2 and process 1 cannot: both must move on to step 1
    together (a restore that ends in a barrier only one of them reaches leaves the
    two a collective out of step)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    args = [str(port), str(tmp_path / "checkpoints")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_CHILD, str(i), *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:  # seconds when they agree; a restore through the manager hangs process 0
        out0, out1 = (p.communicate(timeout=120)[0] for p in procs)
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], (out0, out1)
    assert "checkpoints/2 is unreadable (on another process" in out0, out0
    assert "checkpoints/2 is unreadable on process 1" in out1, out1
    for out in (out0, out1):
        assert "restored 1 1 True" in out, out
    assert any(".unreadable-" in n for n in os.listdir(tmp_path / "checkpoints"))


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
