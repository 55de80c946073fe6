"""checkpoint.on_mismatch=weights: a checkpoint written under other settings resumes
the run at its step from its model parameters alone (layers stacked or unstacked,
cast to the run's dtype), with its data position and a fresh optimizer state; where
the parameters themselves do not map, it is refused as before and nothing changes."""

import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import kardia_jax.train.sft as sft_driver
from kardia_jax.errors import CheckpointError
from kardia_jax.train.checkpoints import resume_or_init

from .conftest import REPO
from .test_restore_mismatch import saved_params, sft, tree_hash
from .test_sft import TINY, read_log

STEPS, MORE, EVERY = 4, 6, 2  # saved at 2 and 4; resumed at 4 and trained to 6
LAYERS = 2  # configs/sft_tiny.py


def run(workdir, small_tokenizer, steps, **overrides):
    return sft(
        workdir, small_tokenizer, **{"train.steps": steps, "checkpoint.every": EVERY}, **overrides
    )


@pytest.fixture(scope="module")
def unscanned(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("unscanned")
    assert run(workdir, small_tokenizer, STEPS) == 0
    return workdir


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("scanned")
    assert run(workdir, small_tokenizer, STEPS, **{"model.scan_layers": True}) == 0
    return workdir


@pytest.fixture
def resumed(monkeypatch):
    """What `resume_or_init` hands the SFT driver, copied to the host before training
    touches it: {"start", "state", "data"}."""
    got = {}

    def spy(*args, **kwargs):
        out = resume_or_init(*args, **kwargs)
        got.update(start=out[4], state=jax.device_get(out[2]), data=out[5])
        return out

    monkeypatch.setattr(sft_driver, "resume_or_init", spy)
    return got


def copy(src, tmp_path):
    shutil.copytree(src, tmp_path / "run")
    return tmp_path / "run"


def stacked(flat):
    """Per-layer entries layers/<i>/<rest> as one [L, ...] array layers/<rest>."""
    out = {k: v for k, v in flat.items() if not k.startswith("layers/")}
    for k in flat:
        if k.startswith("layers/0/"):
            rest = k[len("layers/0/") :]
            out[f"layers/{rest}"] = np.stack([flat[f"layers/{i}/{rest}"] for i in range(LAYERS)])
    return out


def unstacked(flat):
    out = {k: v for k, v in flat.items() if not k.startswith("layers/")}
    for k, v in flat.items():
        if k.startswith("layers/"):
            rest = k[len("layers/") :]
            out.update({f"layers/{i}/{rest}": v[i] for i in range(LAYERS)})
    return out


def assert_resumed_from_weights(workdir, resumed, expected, captured, converted):
    """Step 4's parameters as `expected`, its data position, a fresh optimizer
    state; the log keeps rows 1..4 and continues; nothing moved aside."""
    out = captured.out
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, out
    assert f"checkpoints/{STEPS} was written under other settings" in warning[0]
    assert (
        f"({converted}); the optimizer state and the non-finite counters start fresh"
        in (warning[0])
    )
    assert f"resumed from step {STEPS}" in out
    state = resumed["state"]
    assert resumed["start"] == STEPS and int(state.step) == STEPS
    got = ocp.tree.to_flat_dict(state.params, sep="/")
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # Fresh moments; the schedule's count at the step, Adam's at 0 (bias correction).
    kinds = (optax.ScaleByAdamState, optax.ScaleByScheduleState)
    parts = jax.tree.leaves(state.opt_state, is_leaf=lambda s: isinstance(s, kinds))
    (adam,) = [s for s in parts if isinstance(s, optax.ScaleByAdamState)]
    (schedule,) = [s for s in parts if isinstance(s, optax.ScaleByScheduleState)]
    assert int(adam.count) == 0 and int(schedule.count) == STEPS
    for moment in jax.tree.leaves((adam.mu, adam.nu)):
        assert not np.any(np.asarray(moment, np.float32))
    assert int(state.nonfinite_streak) == int(state.nonfinite_total) == 0
    data = ocp.JsonCheckpointHandler().restore(
        workdir / "checkpoints" / str(STEPS) / "data", args=ocp.args.JsonRestore()
    )
    assert resumed["data"] == data and data  # the data position is the checkpoint's
    return got


def test_unscanned_checkpoint_resumes_a_scanned_run(
    unscanned, tmp_path, small_tokenizer, resumed, capsys
):
    workdir = copy(unscanned, tmp_path)
    before = read_log(workdir)
    capsys.readouterr()
    overrides = {"model.scan_layers": True, "checkpoint.on_mismatch": "weights"}
    assert run(workdir, small_tokenizer, MORE, **overrides) == 0
    expected = stacked(saved_params(unscanned, STEPS))
    assert_resumed_from_weights(
        workdir,
        resumed,
        expected,
        capsys.readouterr(),
        "layers stacked for model.scan_layers=True",
    )
    log = read_log(workdir)
    assert log[:STEPS] == before and [r["step"] for r in log] == list(range(1, MORE + 1))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    assert set(saved_params(workdir, MORE)) == set(expected)  # saved in the new layout


def test_scanned_checkpoint_resumes_an_unscanned_bfloat16_run(
    scanned, tmp_path, small_tokenizer, resumed, capsys
):
    """The other direction, with a param_dtype change on top: cast on read."""
    workdir = copy(scanned, tmp_path)
    before = read_log(workdir)
    capsys.readouterr()
    overrides = {"model.param_dtype": "bfloat16", "checkpoint.on_mismatch": "weights"}
    assert run(workdir, small_tokenizer, MORE, **overrides) == 0
    # ml_dtypes' float32 -> bfloat16 (round to nearest even) is the reference cast.
    bf16 = jax.numpy.bfloat16
    expected = {k: v.astype(bf16) for k, v in unstacked(saved_params(scanned, STEPS)).items()}
    assert_resumed_from_weights(
        workdir,
        resumed,
        expected,
        capsys.readouterr(),
        "layers unstacked for model.scan_layers=False; cast float32 -> bfloat16",
    )
    log = read_log(workdir)
    assert log[:STEPS] == before and [r["step"] for r in log] == list(range(1, MORE + 1))


def test_weights_that_fail_their_checksum_fall_back_to_the_previous_checkpoint(
    unscanned, tmp_path, small_tokenizer, resumed, capsys
):
    """Step 4's arrays replaced by step 2's, step 4's checksum kept: every file reads,
    only the checksum can tell, on the weights path too."""
    workdir = copy(unscanned, tmp_path)
    ckpts = workdir / "checkpoints"
    shutil.rmtree(ckpts / "4" / "state")
    shutil.copytree(ckpts / "2" / "state", ckpts / "4" / "state")
    capsys.readouterr()
    overrides = {"model.scan_layers": True, "checkpoint.on_mismatch": "weights"}
    assert run(workdir, small_tokenizer, MORE, **overrides) == 0
    out = capsys.readouterr().out
    assert "checkpoints/4 is unreadable (the arrays read back differ from the checksum" in out
    assert "resuming at step 2 from its model parameters only" in out, out
    assert resumed["start"] == 2
    assert any(n.startswith("4.unreadable-") for n in os.listdir(ckpts))


def test_optimizer_change_is_refused_and_resumes_from_weights_when_asked(
    unscanned, tmp_path, small_tokenizer, resumed, capsys
):
    """No clipping: the optimizer state's tree changes (opt_state/1 -> /0)."""
    workdir = copy(unscanned, tmp_path)
    before = tree_hash(workdir)
    capsys.readouterr()
    assert run(workdir, small_tokenizer, MORE, **{"train.clip_norm": 0.0}) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "set checkpoint.on_mismatch=weights to resume" in err, err
    assert tree_hash(workdir) == before

    overrides = {"train.clip_norm": 0.0, "checkpoint.on_mismatch": "weights"}
    assert run(workdir, small_tokenizer, MORE, **overrides) == 0
    expected = saved_params(unscanned, STEPS)
    assert_resumed_from_weights(workdir, resumed, expected, capsys.readouterr(), "as saved")
    assert [r["step"] for r in read_log(workdir)] == list(range(1, MORE + 1))


def test_weights_that_do_not_map_are_refused_and_nothing_changes(
    unscanned, tmp_path, small_tokenizer, capsys
):
    workdir = copy(unscanned, tmp_path)
    before = tree_hash(workdir)
    capsys.readouterr()
    overrides = {"model.vocab_multiple": 64, "checkpoint.on_mismatch": "weights"}
    assert run(workdir, small_tokenizer, MORE, **overrides) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err, err
    assert "checkpoint.on_mismatch=weights cannot help" in err, err
    assert "embed_tokens/embedding/value: shape (4176, 64) saved, (4224, 64) expected" in err
    assert "warning:" not in captured.out and "resumed" not in captured.out
    assert tree_hash(workdir) == before


def test_on_mismatch_takes_only_its_two_values(tmp_path, small_tokenizer, capsys):
    capsys.readouterr()
    assert run(tmp_path, small_tokenizer, 1, **{"checkpoint.on_mismatch": "weight"}) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.on_mismatch='weight': use one of refuse, weights" in err, err
    assert not os.path.exists(tmp_path / "checkpoints")


def test_grpo_honours_on_mismatch_weights(tmp_path, small_tokenizer):
    """GRPO resumes through the same `resume_or_init`: its checkpoint.on_mismatch is
    the one inherited from the SFT settings."""
    from kardia_jax.config_files import load_config
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.train.optim import make_optimizer
    from kardia_jax.train.setup import mesh_and_rules, planned_model_config

    grpo_tiny = os.path.join(os.path.dirname(TINY), "grpo_tiny.py")
    config = load_config(grpo_tiny, [f"--config.data.tokenizer={small_tokenizer}"])
    config.model.init = dict(load_config(TINY).model.init)  # a random policy: no model.path
    assert config.checkpoint.on_mismatch == "refuse"
    vocab = len(load_tokenizer(small_tokenizer))
    mesh, rules = mesh_and_rules(config)
    tx = make_optimizer(config.train, 8)

    def resume():
        cfg = planned_model_config(config.model, vocab)
        return resume_or_init(config, cfg, tx, mesh, rules, str(tmp_path))

    ckpt, _, state, _, start, _ = resume()
    assert start == 0
    ckpt.save(2, state, {"at": 2}, wait=True)
    ckpt.close()
    saved = ocp.tree.to_flat_dict(jax.device_get(state.params), sep="/")

    config.model.scan_layers = True
    with pytest.raises(CheckpointError, match="set checkpoint.on_mismatch=weights"):
        resume()
    config.checkpoint.on_mismatch = "weights"
    ckpt, _, state, _, start, data = resume()
    ckpt.close()
    assert start == 2 and int(state.step) == 2 and data == {"at": 2}
    got = ocp.tree.to_flat_dict(jax.device_get(state.params), sep="/")
    expected = stacked(saved)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# Two processes of two CPU devices each save {"w", "m"} at steps 1 and 2; process 1
# damages its own files of step 2; then both resume a state {"w", "n"} (a mismatch)
# with a weights plan that reads "w" alone.
TWO_PROCESS_CHILD = """
import os, sys
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
from kardia_jax.train.checkpoints import Checkpointer, WeightsPlan

mesh = Mesh(np.array(jax.devices()), ("d",))
rows, rep = NamedSharding(mesh, PartitionSpec("d")), NamedSharding(mesh, PartitionSpec())
def full(v):  # random: compressed, constant rows would be a few bytes on disk
    return np.random.default_rng(v).standard_normal((8, 1024), np.float32)
def sharded(v):
    return jax.make_array_from_callback((8, 1024), rows, lambda i: full(v)[i])
ckpt = Checkpointer(root, async_save=False)
for step in (1, 2):
    ckpt.save(step, {"w": sharded(step), "m": sharded(10 + step)}, {"at": step}, wait=True)
if pid == 1:
    d = os.path.join(root, "2", "state", "ocdbt.process_1", "d")
    for f in os.listdir(d):
        os.truncate(os.path.join(d, f), 10)
multihost_utils.sync_global_devices("damaged")
w = jax.ShapeDtypeStruct((8, 1024), np.float32, sharding=rows)
abstract = {"w": w, "n": jax.ShapeDtypeStruct((4,), np.float32, sharding=rep)}

def finish(part, step):
    return {"w": part["w"], "n": jax.device_put(jnp.zeros(4), rep)}

def weights(saved):
    return WeightsPlan({"w": w}, finish, "as saved")

step, restored, data = ckpt.restore_latest(abstract, weights=weights)
exact = all(np.array_equal(s.data, full(step)[s.index]) for s in restored["w"].addressable_shards)
print("restored", step, data["at"], exact, flush=True)
ckpt.close()
"""


def test_two_processes_take_the_weights_path_together(tmp_path):
    """Process 1 cannot read step 2's weights: both move on to step 1 and resume from
    its weights together; only process 0 prints the warning."""
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
    try:  # seconds when they agree; a process left at a collective hangs
        out0, out1 = (p.communicate(timeout=120)[0] for p in procs)
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], (out0, out1)
    assert "checkpoints/2 is unreadable (on another process" in out0, out0
    assert "checkpoints/2 is unreadable on process 1" in out1, out1
    for out in (out0, out1):
        assert "restored 1 1 True" in out, out
    warning = "checkpoints/1 was written under other settings; checkpoint.on_mismatch=weights"
    printed = [line for line in out0.splitlines() if line.startswith("warning: ")]
    assert sum(warning in line for line in printed) == 1, out0
    assert warning not in out1, out1
