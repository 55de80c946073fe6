"""Judge benchmark: candidates scored per second by `RubricJudge` in expected-score
mode, with the five dimensions sharing one prefill of their prefix (the default)
and with five full prompts per candidate, on the same random weights and prompts.

    python bench/judge.py                # SmolLM2-135M-shaped judge
    python bench/judge.py --size tiny    # a quick run on a small model

Prompts are real: the shipped rubric, the Qwen2.5 tokenizer, contexts and
reference replies from the bundled sample's test split. The judge has SmolLM2-135M's
shape except its vocabulary, widened to the Qwen2.5 tokenizer's (the vocabulary
only costs an embedding gather and five logit rows per candidate: <1% of FLOPs).
Prints one JSON object and a one-line summary. A script, not a test: timings depend
on the machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from shapes import smollm2_135m, tiny  # bench/shapes.py

from kardia_jax.compiles import CompileCounter
from kardia_jax.data import load_dialogues, load_tokenizer, sample_path, turn_examples
from kardia_jax.host import keep_freed_memory
from kardia_jax.models import count_params, init_model
from kardia_jax.rewards import JudgeConfig, JudgeContext, RubricJudge

MODELS = {"tiny": ("tiny", tiny), "full": ("smollm2_135m", smollm2_135m)}


def sample_items(n: int) -> tuple[list[JudgeContext], list[str]]:
    """n (context, reference reply) pairs from the bundled test sample."""
    dialogues, _ = load_dialogues(str(sample_path("test")), mode="skip")
    examples = turn_examples(dialogues)
    picked = [examples[i * len(examples) // n] for i in range(n)]
    return (
        [JudgeContext.from_dialogue(e.dialogue, e.turn) for e in picked],
        [e.target for e in picked],
    )


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=tuple(MODELS), default="full")
    ap.add_argument("--candidates", type=int, default=8, help="one batch of this many")
    ap.add_argument("--dtype", default="float32", help="bf16 is emulated (slow) on CPU")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    keep_freed_memory()  # before XLA starts its threads: kardia_jax/host.py

    tok = load_tokenizer()
    name, make = MODELS[args.size]
    cfg = make(-(-len(tok) // 128) * 128).replace(param_dtype=args.dtype, dtype=args.dtype)
    model = init_model(cfg, seed=0)
    judge = RubricJudge(model, tok, JudgeConfig(max_batch=args.candidates), name=name)
    contexts, replies = sample_items(args.candidates)
    prompts = judge.prompts(contexts, replies)
    lengths = [len(p.prefix_ids) for p in prompts]

    loadavg_start = os.getloadavg()
    results = {}
    for sharing in (True, False):
        key = "shared" if sharing else "naive"
        compiles = CompileCounter()
        t = time.perf_counter()
        out = judge.evaluate_prompts(prompts, prefix_sharing=sharing)  # compiles
        compile_s = time.perf_counter() - t
        run = lambda s=sharing: judge.evaluate_prompts(prompts, prefix_sharing=s)
        seconds = timed(run, args.reps)
        results[key] = {
            "seconds": seconds,
            "candidates_per_s": len(prompts) / seconds,
            "first_call_s": compile_s,
            "compiles": compiles.count,
            "scores": out.scores,
        }
    diff = float(np.abs(results["shared"].pop("scores") - results["naive"].pop("scores")).max())
    c = len(judge.builder.head_ids)
    p = judge.length_bucket(max(lengths) - c)
    t = judge.length_bucket(max(lengths) + max(map(len, judge.builder.suffix_ids)))
    report = {
        "command": "python bench/judge.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "jax": jax.__version__,
        "model": name,
        "params": count_params(model),
        "dtype": args.dtype,
        "rubric": judge.rubric.id,
        "candidates": len(prompts),
        "prefix_tokens": {"min": min(lengths), "mean": np.mean(lengths), "max": max(lengths)},
        "rubric_head_tokens": c,
        "suffix_tokens": [len(x) for x in judge.builder.suffix_ids],
        # Tokens each path runs through the layers per candidate, padding included:
        # shared = head once per batch + the rest's bucket + 5 suffix buckets;
        # naive = 5 full prompts, each padded to its length bucket.
        "tokens_per_candidate": {
            "shared": c / len(prompts) + p + 5 * judge._suffix_ids.shape[1],
            "naive": 5 * t,
        },
        "results": results,
        "shared_over_naive_time": results["shared"]["seconds"] / results["naive"]["seconds"],
        "max_abs_score_diff": diff,
        "loadavg_end": os.getloadavg(),
    }
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    r = report["results"]
    print(
        f"SUMMARY: {name} judge, {len(prompts)} candidates of ~{np.mean(lengths):.0f} tokens: "
        f"shared {r['shared']['candidates_per_s']:.2f} cand/s, naive "
        f"{r['naive']['candidates_per_s']:.2f} cand/s; shared/naive time "
        f"{report['shared_over_naive_time']:.2f}; max |diff| {diff:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
