"""Faults injected into the tiny GRPO run (one process; SIGTERM to one of two is in
test_sigterm.py): after each, the rerun ends with the weights, log and rollout ledger
of an uninterrupted run, or the run refuses as documented and loses nothing."""

import os

import pytest

from . import harness as h

STEPS = 6  # a checkpoint after every step (h.grpo_args)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sft_policy, small_tokenizer):
    workdir = tmp_path_factory.mktemp("grpo-straight")
    h.run(h.grpo_args(workdir, sft_policy, small_tokenizer))
    assert h.checkpoints(workdir) == list(range(1, STEPS + 1))
    assert len(h.read_jsonl(workdir / "rollouts.jsonl")) == STEPS * 4 * 4  # prompts x group
    return workdir


def test_kill_9_at_a_random_step(request, straight, tmp_path, sft_policy, small_tokenizer):
    fault = "GRPO: kill -9 at a random step"
    after = h.rng(fault).randrange(1, STEPS)
    workdir = tmp_path / "run"
    args = h.grpo_args(workdir, sft_policy, small_tokenizer)
    procs = h.start(args)
    h.wait_for(lambda: h.log_rows(workdir / "grpo_log.jsonl") >= after, procs)
    h.kill9(procs)
    left = h.checkpoints(workdir)
    record = f"killed once step {after}'s row was written (checkpoints then: {left})"
    h.record(request, fault, record)
    out = h.run(args)[0]
    resumed = f"resumed from step {left[-1]}" if left else "no checkpoint: from step 0"
    assert not left or resumed in out, out
    h.same_run(straight, workdir, h.GRPO_LOGS)
    h.record(request, fault, record, "survived", resumed)


@pytest.mark.parametrize("how", ["truncated", "deleted", "garbage"])
def test_newest_checkpoint_corrupted(request, straight, tmp_path, sft_policy, small_tokenizer, how):
    fault = f"GRPO: newest checkpoint corrupted ({how} file)"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 4)
    record = "checkpoint 4: " + h.corrupt(workdir / "checkpoints" / "4", how, h.rng(fault))
    h.record(request, fault, record)
    out = h.run(h.grpo_args(workdir, sft_policy, small_tokenizer))[0]
    h.same_run(straight, workdir, h.GRPO_LOGS)
    aside = [n for n in os.listdir(workdir / "checkpoints") if n.startswith("4.unreadable-")]
    if "checkpoints/4 is unreadable" in out:
        assert "resumed from step 3" in out and len(aside) == 1, out
        detail = f"moved aside as {aside[0]}; resumed from 3"
    else:
        assert "resumed from step 4" in out and not aside, out
        detail = "a file the restore does not need; resumed from 4 with the same weights"
    h.record(request, fault, record, "survived", detail)


def test_config_change_between_runs(request, straight, tmp_path, sft_policy, small_tokenizer):
    fault = "GRPO: config change between runs (model.scan_layers)"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 3)
    before = h.tree_hash(workdir)
    record = "rerun with --config.model.scan_layers=True"
    h.record(request, fault, record)
    changed = h.grpo_args(workdir, sft_policy, small_tokenizer, **{"model.scan_layers": True})
    codes, outs = h.finish(h.start(changed))
    assert codes == [2], outs
    errors = [ln for ln in outs[0].splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "does not match this run's state" in errors[0], outs
    assert h.tree_hash(workdir) == before
    out = h.run(h.grpo_args(workdir, sft_policy, small_tokenizer))[0]
    assert "resumed from step 3" in out
    h.same_run(straight, workdir, h.GRPO_LOGS)
    h.record(request, fault, record, "refused", "exit 2, one line, workdir byte-identical")


def test_torn_last_log_lines(request, straight, tmp_path, sft_policy, small_tokenizer):
    fault = "GRPO: torn last line of the log and the rollout ledger"
    workdir = tmp_path / "run"
    h.as_if_killed_after(straight, workdir, 3)
    r = h.rng(fault)
    record = "; ".join(h.tear(workdir / n, r) for n in ("grpo_log.jsonl", "rollouts.jsonl"))
    h.record(request, fault, record)
    out = h.run(h.grpo_args(workdir, sft_policy, small_tokenizer))[0]
    assert out.count("warning: ") == 2 and out.count("cut a torn last line") == 2, out
    h.same_run(straight, workdir, h.GRPO_LOGS)
    h.record(request, fault, record, "survived", "each torn line cut and reported")


def test_a_nan_reward(request, straight, tmp_path, sft_policy, small_tokenizer):
    fault = "GRPO: a NaN batch (the reward of one completion)"
    call = h.rng(fault).randrange(2, STEPS + 1)
    workdir = tmp_path / "run"
    record = f"reward call {call} returns NaN for one completion"
    h.record(request, fault, record)
    broken = h.grpo_args(
        workdir, sft_policy, small_tokenizer, **{"reward.fn": "tests.faults.rewards:nan_once"}
    )
    codes, outs = h.finish(h.start(broken, env={"KARDIA_FAULT_NAN_CALL": str(call)}))
    assert codes == [2], outs
    errors = [ln for ln in outs[0].splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "a non-finite 'total' for 1 of 16" in errors[0], outs
    left = h.checkpoints(workdir)
    assert left and left[-1] < STEPS, left
    out = h.run(h.grpo_args(workdir, sft_policy, small_tokenizer))[0]
    assert f"resumed from step {left[-1]}" in out
    h.same_run(straight, workdir, h.GRPO_LOGS)
    h.record(
        request, fault, record, "refused", f"exit 2 naming the reward; rerun resumed at {left[-1]}"
    )
