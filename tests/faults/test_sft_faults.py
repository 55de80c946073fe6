"""Faults injected into the tiny SFT run (one process; SIGTERM to one of two is in
test_sigterm.py): after each, the rerun ends with the weights and logs of an
uninterrupted run, or the run refuses as documented and loses nothing."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from . import harness as h

STEPS = 8  # checkpoints at 2, 4, 6, 8 (h.sft_args)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("sft-straight")
    h.run(h.sft_args(workdir, small_tokenizer))
    assert h.checkpoints(workdir) == [2, 4, 6, 8]
    return workdir


def test_kill_9_at_a_random_step(request, straight, tmp_path, small_tokenizer):
    after = h.rng("sft kill").randrange(1, STEPS)
    fault = "SFT: kill -9 at a random step"
    workdir = tmp_path / "run"
    args = h.sft_args(workdir, small_tokenizer)
    procs = h.start(args)
    log = workdir / "train_log.jsonl"
    h.wait_for(lambda: h.log_rows(log) >= after, procs)
    h.kill9(procs)
    left = h.checkpoints(workdir)
    record = f"killed once step {after}'s row was written (checkpoints then: {left})"
    h.record(request, fault, record)
    out = h.run(args)[0]
    resumed = f"resumed from step {left[-1]}" if left else "no checkpoint: from step 0"
    assert not left or resumed in out, out
    h.same_run(straight, workdir, h.SFT_LOGS)
    h.record(request, fault, record, "survived", resumed)


def test_kill_9_during_an_async_checkpoint_save(request, straight, tmp_path, small_tokenizer):
    fault = "SFT: kill -9 during an async checkpoint save"
    steps = [2, 4, 6]
    h.rng(fault).shuffle(steps)
    # A loaded machine can stall this process between seeing the save start and the
    # kill; then the save may be whole already: the next checkpoint is tried.
    for attempt, step in enumerate(steps):
        workdir = tmp_path / f"run{attempt}"
        args = h.sft_args(workdir, small_tokenizer)
        procs = h.start(args)
        ckpts = workdir / "checkpoints"
        prefix = f"{step}.orbax-checkpoint-tmp"

        def saving(ckpts=ckpts, prefix=prefix):
            return ckpts.is_dir() and any(n.startswith(prefix) for n in os.listdir(ckpts))

        h.wait_for(saving, procs, poll=0.0005)
        h.kill9(procs)
        left = h.checkpoints(workdir)
        if step not in left:
            break
    partial = sorted(n for n in os.listdir(ckpts) if "tmp" in n)
    assert step not in left and partial, (left, partial)  # the save was cut short
    record = f"killed while checkpoint {step} was being written (left: {partial})"
    h.record(request, fault, record)
    out = h.run(args)[0]
    resumed = f"resumed from step {left[-1]}" if left else "no checkpoint: from step 0"
    assert not left or resumed in out, out
    h.same_run(straight, workdir, h.SFT_LOGS)
    assert h.checkpoints(workdir) == [2, 4, 6, 8]
    h.record(request, fault, record, "survived", resumed)


@pytest.mark.parametrize("how", ["truncated", "deleted", "garbage"])
def test_newest_checkpoint_corrupted(request, straight, tmp_path, small_tokenizer, how):
    fault = f"SFT: newest checkpoint corrupted ({how} file)"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 6)
    record = "checkpoint 6: " + h.corrupt(workdir / "checkpoints" / "6", how, h.rng(fault))
    h.record(request, fault, record)
    out = h.run(h.sft_args(workdir, small_tokenizer))[0]
    h.same_run(straight, workdir, h.SFT_LOGS)
    aside = [n for n in os.listdir(workdir / "checkpoints") if n.startswith("6.unreadable-")]
    if "checkpoints/6 is unreadable" in out:
        assert "resumed from step 4" in out and len(aside) == 1, out  # kept for inspection
        detail = f"moved aside as {aside[0]}; resumed from 4"
    else:  # a file the restore does not read: the weights above prove it
        assert "resumed from step 6" in out and not aside, out
        detail = "a file the restore does not need; resumed from 6 with the same weights"
    h.record(request, fault, record, "survived", detail)


def test_config_change_between_runs(request, straight, tmp_path, small_tokenizer):
    fault = "SFT: config change between runs (model.scan_layers)"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 4)
    before = h.tree_hash(workdir)
    record = "rerun with --config.model.scan_layers=True"
    h.record(request, fault, record)
    codes, outs = h.finish(
        h.start(h.sft_args(workdir, small_tokenizer, **{"model.scan_layers": True}))
    )
    assert codes == [2], outs
    errors = [ln for ln in outs[0].splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "does not match this run's state" in errors[0], outs
    assert h.tree_hash(workdir) == before  # nothing renamed, truncated or written
    # The old setting back: the run resumes as if nothing had happened.
    out = h.run(h.sft_args(workdir, small_tokenizer))[0]
    assert "resumed from step 4" in out
    h.same_run(straight, workdir, h.SFT_LOGS)
    h.record(request, fault, record, "refused", "exit 2, one line, workdir byte-identical")


def test_torn_last_log_lines(request, straight, tmp_path, small_tokenizer):
    fault = "SFT: torn last log line (train and held-out logs)"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 6)
    r = h.rng(fault)
    record = "; ".join(h.tear(workdir / n, r) for n in ("train_log.jsonl", "eval_log.jsonl"))
    h.record(request, fault, record)
    out = h.run(h.sft_args(workdir, small_tokenizer))[0]
    assert out.count("warning: ") == 2 and out.count("cut a torn last line") == 2, out
    h.same_run(straight, workdir, h.SFT_LOGS)
    h.record(request, fault, record, "survived", "each torn line cut and reported")


def _saved(workdir, step):
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return ocp.tree.to_flat_dict(state, sep="/")


def test_a_nan_batch(request, straight, tmp_path, small_tokenizer):
    fault = "SFT: a NaN batch"
    step = h.rng(fault).randrange(2, STEPS)
    workdir = tmp_path / "run"
    record = f"step {step}'s batch makes the loss and every gradient NaN"
    h.record(request, fault, record)
    args = h.sft_args(workdir, small_tokenizer, **{"checkpoint.every": 1, "eval.every": 0})
    h.run(args, env={"KARDIA_FAULT_NAN_STEP": str(step)}, module="tests.faults.poisoned")
    log = h.read_jsonl(workdir / "train_log.jsonl")
    assert [r["skipped"] for r in log] == [int(s == step) for s in range(1, STEPS + 1)]
    assert not np.isfinite(log[step - 1]["loss"])
    # The update was skipped: parameters and optimizer state as the step before left them.
    before, after = _saved(workdir, step - 1), _saved(workdir, step)
    for name in before:
        if name.startswith(("params/", "opt_state/")):
            np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # Up to the poisoned step the run is the uninterrupted one.
    plain = h.rows(straight / "train_log.jsonl")[: step - 1]
    assert h.rows(workdir / "train_log.jsonl")[: step - 1] == plain
    assert all(np.isfinite(r["loss"]) for r in log if r["step"] != step)
    h.record(request, fault, record, "survived", "update skipped and counted; run finished")


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def test_a_log_corrupt_before_its_last_line_on_two_processes(
    request, straight, tmp_path, small_tokenizer
):
    fault = "SFT: a log line corrupt before the last, on 2 processes"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 4)
    log = workdir / "train_log.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    n = h.rng(fault).randrange(1, len(lines) - 1)
    lines[n] = lines[n][: len(lines[n]) // 2] + b"\n"  # not a kill's doing: refused
    log.write_bytes(b"".join(lines))
    before = h.tree_hash(workdir)
    record = f"train_log.jsonl line {n + 1} of {len(lines)} cut in half"
    h.record(request, fault, record)
    codes, outs = h.finish(h.start(h.sft_args(workdir, small_tokenizer), pair=True))
    assert codes == [2, 2], outs  # both stop: neither waits for the other
    errors = [[ln for ln in out.splitlines() if ": error: " in ln] for out in outs]
    assert all(len(e) == 1 for e in errors), outs
    assert f"train_log.jsonl:{n + 1}" in errors[0][0], errors
    assert h.tree_hash(workdir) == before
    h.record(request, fault, record, "refused", "exit 2 on both processes naming the line")
