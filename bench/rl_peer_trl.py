"""TRL's `GRPOTrainer` on bench/rl_work.py's work, as its documented user runs it on
a CPU (transformers generation, no vLLM): one optimizer step per P x G completions,
each step timed by a `TrainerCallback`, TRL's own profiling timings kept per step.

    python bench/rl_peer_trl.py --work /tmp/rl-step --out /tmp/rl-step/trl.json

Settings that are not the work's are GRPOConfig's defaults (gradient checkpointing
on, loss_type, epsilon, max_grad_norm 1.0, a linear lr decay); bf16 is off for f32.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import rl_work  # noqa: E402

DEFAULT_DEVICE_BATCH = 8  # TrainingArguments' per_device_train_batch_size


def device_batch(rows: int) -> int:
    """The largest divisor of the step's completions up to the default batch: the
    rest of the step is gradient accumulation, so one optimizer step sees them all."""
    return max(b for b in range(1, min(rows, DEFAULT_DEVICE_BATCH) + 1) if rows % b == 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, help="fewer steps than the work's")
    args = ap.parse_args(argv)
    work = rl_work.load_work(args.work, args.steps)

    import accelerate
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    # TRL times its phases (generation, log-probs, rewards, loss) with ProfilingContext
    # and sends them only to wandb / mlflow / trackio: keep them here too.
    spans: collections.defaultdict = collections.defaultdict(float)
    log_metrics = profiling.ProfilingContext._log_metrics

    def keep(self, duration):
        spans[self.name] += duration
        return log_metrics(self, duration)

    profiling.ProfilingContext._log_metrics = keep

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir)
    stop_ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    new_tokens = [0]  # of the current step

    def kardia_reward(prompts, completions, completion_ids, index, **kwargs):
        # Decoded as our driver decodes (span markers are special tokens: TRL's
        # `completions` have them stripped), final stop token dropped.
        new_tokens[0] += sum(len(ids) for ids in completion_ids)
        texts = [
            tokenizer.decode(ids[:-1] if ids and ids[-1] in stop_ids else ids)
            for ids in completion_ids
        ]
        return rl_work.reward(list(index), texts)

    steps, phases, tokens = [], [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            spans.clear()
            new_tokens[0] = 0
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(time.perf_counter() - self.t)
            phases.append(dict(spans))
            tokens.append(new_tokens[0])

    rows = work.P * work.G
    batch = device_batch(rows)
    out_dir = tempfile.mkdtemp(prefix="trl-grpo-")
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,  # GRPOConfig's default is bf16; the work is f32
        model_init_kwargs={"dtype": "float32"},  # the model loaded by TRL from the path
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=rows // batch,
        num_generations=work.G,
        max_completion_length=work.max_new_tokens,
        temperature=work.temperature,
        top_p=1.0,
        top_k=0,
        beta=work.beta,
        num_iterations=1,
        learning_rate=work.lr,
        warmup_steps=0,
        optim="adamw_torch",
        max_steps=work.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=work.seed,
    )
    dataset = datasets.Dataset.from_list(
        [{"prompt": p["text"], "index": p["index"]} for p in work.prompts]
    )
    logs = []  # TRL's own per-step log rows (loss, kl, completion lengths, ...)

    class KeepLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                kept.append({k: v for k, v in logs.items() if isinstance(v, int | float)})

    kept = logs
    trainer = GRPOTrainer(
        model=work.model_dir,
        reward_funcs=kardia_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer(), KeepLogs()],
    )
    rl_work.examples(work.model_dir)  # the reward's example list, built before any step
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    names = sorted({k for p in phases for k in p})
    prepare = "GRPOTrainer._prepare_inputs"  # generation, rewards, reference log-probs
    # The rest of the step: the loss's forward and backward, the optimizer step.
    after = [s - p.get(prepare, 0.0) for s, p in zip(steps, phases, strict=True)]
    result = {
        "trainer": "trl",
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "accelerate": accelerate.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "step_seconds": steps,
        "phases": {n.removeprefix("GRPOTrainer."): [p.get(n, 0.0) for p in phases] for n in names}
        | {"after_prepare_inputs": after},
        "new_tokens": tokens,
        "compile_seconds": None,
        "run_seconds": wall,
        "notes": (
            f"GRPOTrainer, per_device_train_batch_size {batch} x gradient_accumulation_steps "
            f"{rows // batch} = {rows} completions per optimizer step (generated at once); "
            f"gradient_checkpointing {config.gradient_checkpointing} (GRPOConfig default), "
            f"loss_type {config.loss_type}; phases: TRL's profiling spans (nested: "
            "_prepare_inputs holds generation, rewards and reference log-probs; "
            "after_prepare_inputs: the step less _prepare_inputs)"
        ),
        "logs": logs,
    }
    bad = [s for s in steps if not math.isfinite(s)]
    if bad or len(steps) != work.steps:
        raise SystemExit(f"timed {len(steps)} of {work.steps} steps")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
