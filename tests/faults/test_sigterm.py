"""Preemption on a pod's path: SIGTERM to process 1 of 2 (jax.distributed over gloo)
during SFT, then during GRPO. Both processes save the same step and exit 0 naming it,
and the rerun on 2 processes resumes there and ends with the parameters and logs of
an uninterrupted run, bit for bit."""

import os
import signal

from . import harness as h

SFT_STEPS, GRPO_STEPS = 16, 8


def _preempt_pair(args: list[str], workdir, after: int) -> int:
    """Runs the pair until checkpoint `after` is complete, sends SIGTERM to process 1
    alone, and returns the step both saved."""
    procs = h.start(args, pair=True)
    h.wait_for(lambda: after in h.checkpoints(workdir), procs, poll=0.02)
    os.kill(procs[1].pid, signal.SIGTERM)
    codes, outs = h.finish(procs, timeout=300)
    assert codes == [0, 0], outs
    saved = [h.SAVED.findall(out) for out in outs]
    assert all(len(s) == 1 for s in saved), outs  # each process names its step once
    (step, _), (step1, _) = saved[0][0], saved[1][0]
    assert step == step1, outs  # the same step on both
    step = int(step)
    assert after < step and step in h.checkpoints(workdir), (step, h.checkpoints(workdir))
    return step


def test_sigterm_to_one_of_two_sft_processes(request, tmp_path, small_tokenizer):
    fault = "SFT: SIGTERM to process 1 of 2"
    overrides = {
        "train.steps": SFT_STEPS,
        "checkpoint.max_to_keep": SFT_STEPS,
        "eval.every": 0,
    }
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    h.run(h.sft_args(straight, small_tokenizer, **overrides), pair=True)

    args = h.sft_args(broken, small_tokenizer, **overrides)
    record = "SIGTERM to process 1 once checkpoint 2 was complete"
    h.record(request, fault, record)
    step = _preempt_pair(args, broken, after=2)
    assert step < SFT_STEPS
    assert not os.path.exists(broken / "hf")  # stopped, not finished
    outs = h.run(args, pair=True)
    assert all(f"resumed from step {step}" in out for out in outs), outs

    log = h.rows(straight / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, SFT_STEPS + 1))
    h.same_run(straight, broken, {"train_log.jsonl": None})
    h.record(request, fault, record, "survived", f"both saved step {step}, exit 0; resumed")


def test_sigterm_to_one_of_two_grpo_processes(request, tmp_path, sft_policy, small_tokenizer):
    fault = "GRPO: SIGTERM to process 1 of 2"
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    overrides = {"train.steps": GRPO_STEPS, "checkpoint.max_to_keep": GRPO_STEPS}
    h.run(h.grpo_args(straight, sft_policy, small_tokenizer, **overrides), pair=True)

    args = h.grpo_args(broken, sft_policy, small_tokenizer, **overrides)
    record = "SIGTERM to process 1 once checkpoint 1 was complete"
    h.record(request, fault, record)
    step = _preempt_pair(args, broken, after=1)
    assert step < GRPO_STEPS
    outs = h.run(args, pair=True)
    assert all(f"resumed from step {step}" in out for out in outs), outs

    ledger = h.read_jsonl(straight / "rollouts.jsonl")
    assert len(ledger) == GRPO_STEPS * 4 * 4  # steps x prompts x group, each row once
    assert [r["step"] for r in h.read_jsonl(straight / "grpo_log.jsonl")] == list(
        range(1, GRPO_STEPS + 1)
    )
    h.same_run(straight, broken, h.GRPO_LOGS)
    h.record(request, fault, record, "survived", f"both saved step {step}, exit 0; resumed")
