"""Rollout waste: decode work spent on rows that have already finished, with and
without compaction (`Sampler(compact=...)`), on a GRPO rollout's work: the demo's SFT
policy, the bundled sample's hard-split prompts rendered with the chat template, P
prompts x G samples, temperature 1, the stop ids GRPO uses (`rl/grpo.py`).

    PYTHONPATH=. python bench/rollout_waste.py --policy /tmp/kardia-demo/sft/hf

Per mode: `decode_row_steps` (rows computed at each decode step, finished and
padding rows included, plus each row's first token from the prefill),
`kept_tokens` (completion tokens returned), their ratio, the wall seconds of each
call and the programs it compiled. The modes alternate call by call (the first of
each compiles), so a change in the machine's load falls on both; the figures are
the second call's and the best of the later ones. The same seed gives the same
completions in both modes (checked). Prints one JSON object; a script, not a test
(the load average is recorded). Run from the repository root with
PYTHONPATH=. so that this checkout's package is the one imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from kardia_jax.compiles import CompileCounter
from kardia_jax.config_files import load_config
from kardia_jax.data.tokenizer import read_tokenizer
from kardia_jax.host import keep_freed_memory
from kardia_jax.models import load_hf_model
from kardia_jax.rl import rollout
from kardia_jax.rl.grpo import load_grpo_prompts
from kardia_jax.sampling import Sampler, SamplingConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_call(sampler, prompts, args, sampling):
    compiles = CompileCounter()
    t = time.perf_counter()
    out = sampler(prompts, args.new, sampling, group_size=args.group, seed=args.seed)
    wall = time.perf_counter() - t
    stats = dict(sampler.last_stats)
    call = {
        "wall_s": round(wall, 3),
        "compiled": compiles.by_name(),
        "compile_s": round(compiles.seconds, 2),
        **stats,
        "ratio": round(stats["decode_row_steps"] / stats["kept_tokens"], 4),
        "finished_row_fraction": round(1 - stats["kept_tokens"] / stats["decode_row_steps"], 4),
    }
    return call, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--policy",
        default="/tmp/kardia-demo/sft/hf",
        help="an HF checkpoint folder (default: the README demo's SFT policy)",
    )
    ap.add_argument(
        "--config", default=os.path.join(REPO, "kardia_jax", "configs", "pipeline_demo.py")
    )
    ap.add_argument("--prompts", type=int, default=4, help="P: the first P hard-split prompts")
    ap.add_argument("--group", type=int, default=8, help="G: samples per prompt")
    ap.add_argument("--new", type=int, default=128, help="max new tokens")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calls", type=int, default=4, help="calls per mode (the first compiles)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    keep_freed_memory()  # before XLA starts its threads: kardia_jax/host.py
    # Compile counts and the first call's seconds should be real compiles, not cache reads.
    jax.config.update("jax_enable_compilation_cache", False)

    config = load_config(args.config)
    tokenizer = read_tokenizer(args.policy, "policy's tokenizer")
    examples = load_grpo_prompts(config.grpo.data, tokenizer)
    prompts = [examples[i].prompt_ids.tolist() for i in range(args.prompts)]
    model = load_hf_model(args.policy, dtype="float32")  # unrolled, as the demo decodes
    stop_ids = rollout.stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampling = SamplingConfig(temperature=args.temperature)

    report = {
        "command": "python bench/rollout_waste.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "jax": jax.__version__,
        "policy": args.policy,
        "prompt_tokens": [len(p) for p in prompts],
        "P": args.prompts,
        "G": args.group,
        "new_tokens": args.new,
        "temperature": args.temperature,
        "stop_ids": list(stop_ids),
        "modes": {},
    }
    samplers = {
        name: Sampler(model, eos_ids=stop_ids, pad_id=pad, compact=name == "compact")
        for name in ("plain", "compact")
    }
    outs, calls = {}, {name: [] for name in samplers}
    for _ in range(args.calls):
        for name, sampler in samplers.items():
            call, outs[name] = timed_call(sampler, prompts, args, sampling)
            calls[name].append(call)
    for name, c in calls.items():
        walls = [x["wall_s"] for x in c[1:]]
        report["modes"][name] = {
            "calls": c,
            "second_call_wall_s": walls[0] if walls else None,
            "best_wall_s": min(walls) if walls else None,
        }
    a, b = outs["plain"], outs["compact"]
    report["same_completions"] = bool(
        np.array_equal(a.tokens, b.tokens) and np.array_equal(a.lengths, b.lengths)
    )
    report["max_abs_logprob_diff"] = float(np.abs(a.logprobs - b.logprobs).max())
    report["lengths"] = b.lengths.tolist()
    report["finish_reasons"] = {r: b.finish_reason.count(r) for r in set(b.finish_reason)}
    report["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    p, c = (report["modes"][m] for m in ("plain", "compact"))
    print(
        f"row-steps / kept tokens: {p['calls'][-1]['ratio']:.3f} plain, "
        f"{c['calls'][-1]['ratio']:.3f} compact; best wall {p['best_wall_s']} s -> "
        f"{c['best_wall_s']} s; widths {c['calls'][-1]['widths']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
