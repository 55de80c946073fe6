"""Sampler benchmark: tokens/s of kardia-jax's jitted sampler against transformers'
`generate` on the same random weights, in one run, plus the fraction of roofline
and decode time per token at position 16 vs 1000.

    python bench/sampler.py                 # SmolLM2-135M and Qwen2.5-0.5B shapes
    python bench/sampler.py --size tiny     # a quick run on a small model
    python bench/sampler.py --dtype bfloat16   # bf16 weights on both sides

Prints one JSON object and a one-line summary. A script, not a test: timings
depend on the machine and on what else runs on it (the load average is recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from shapes import MODELS, tiny  # bench/shapes.py

from kardia_jax.host import keep_freed_memory
from kardia_jax.models import ModelConfig, count_params, init_model, save_hf_model
from kardia_jax.sampling import Sampler
from kardia_jax.sampling.state import default_cache_dtype


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------- machine peaks
def measure_bandwidth() -> float:
    """Bytes/s streaming 256 MiB from memory: the better of a jitted reduction and
    a jitted matrix-vector product (the access pattern of batch-1 decoding)."""
    x = jnp.ones((64 * 2**20,), jnp.float32)
    w = x.reshape(8192, 8192)
    v = jnp.ones((1, 8192), jnp.float32)
    total, gemv = jax.jit(jnp.sum), jax.jit(lambda v, w: v @ w)
    total(x).block_until_ready()
    gemv(v, w).block_until_ready()
    t = min(
        best_of(lambda: total(x).block_until_ready(), 5),
        best_of(lambda: gemv(v, w).block_until_ready(), 5),
    )
    return x.nbytes / t


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32) -> float:
    """FLOP/s of an [n, n] x [n, n] matmul in `dtype` (f32 results)."""
    a = (jnp.ones((n, n), jnp.float32) / n).astype(dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    return 2 * n**3 / best_of(lambda: f(a).block_until_ready(), 5)


# -------------------------------------------------------------------- the model
def step_cost(cfg: ModelConfig, batch: int, position: float, cache_dtype) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step at `position`: every weight read once
    (the embedding table once, as the output projection), keys and values up to
    `position` read once; 2 FLOPs per multiply-add."""
    params = cfg.num_params()
    embed = cfg.vocab_size * cfg.hidden_size
    matmul_params = params - embed * (0 if cfg.tie_word_embeddings else 1)  # lookup is no matmul
    w, c = jnp.dtype(cfg.param_dtype).itemsize, jnp.dtype(cache_dtype).itemsize
    kv_bytes = 2 * cfg.num_layers * batch * position * cfg.num_kv_heads * cfg.head_dim * c
    bytes_ = params * w - (0 if cfg.tie_word_embeddings else embed * w) + kv_bytes
    attn_flops = 4 * batch * cfg.num_layers * cfg.num_heads * cfg.head_dim * position
    return float(bytes_), float(2 * batch * matmul_params + attn_flops)


def run_ours(model, prompts, new: int, reps: int):
    sampler = Sampler(model, eos_ids=[])
    out = sampler(prompts, new)  # compiles both programs

    def prefill():
        jax.block_until_ready(sampler.prefill(prompts, new))

    def both():
        state = sampler.prefill(prompts, new)
        jax.block_until_ready(sampler.decode(state))

    t_prefill, t_total = best_of(prefill, reps), best_of(both, reps)
    return out.tokens, t_prefill, t_total


def run_hf(hf, prompts, new: int, reps: int, threads: int):
    import torch

    device = next(hf.parameters()).device
    ids = torch.tensor(prompts, device=device)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    def gen(n):
        with torch.no_grad():
            out = hf.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    try:
        gen(2)  # warm-up
        t_prefill = best_of(lambda: gen(1), reps)
        out = gen(new)
        t_total = best_of(lambda: gen(new), reps)
    finally:
        torch.set_num_threads(before)
    return out[:, ids.shape[1] :].cpu().numpy(), t_prefill, t_total


def bench_model(name, cfg, batches, prompt_len, new, reps, peaks, with_hf):
    import torch
    import transformers

    model = init_model(cfg, seed=0)
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        if with_hf:
            save_hf_model(model, d)
            torch_dtype = getattr(torch, cfg.param_dtype)
            hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).eval()
            if jax.default_backend() == "gpu" and torch.cuda.is_available():
                hf = hf.cuda()  # the same device for both sides
        for b in batches:
            rng = np.random.default_rng(b)
            prompts = rng.integers(3, cfg.vocab_size, (b, prompt_len)).tolist()
            tokens, tp, tt = run_ours(model, prompts, new, reps)
            step = (tt - tp) / (new - 1)  # decode steps after the prefill's first token
            cache_dtype = default_cache_dtype(cfg.dtype)
            nbytes, flops = step_cost(cfg, b, prompt_len + new / 2, cache_dtype)
            row = {
                "ours_tok_s": b * new / tt,
                "ours_prefill_s": tp,
                "ours_decode_step_ms": 1e3 * step,
                "roofline_bandwidth_fraction": nbytes / peaks["bytes_per_s"] / step,
                "roofline_flops_fraction": flops / peaks["flops_per_s"] / step,
            }
            if with_hf:
                # torch's default threads and a single thread: on a shared machine
                # OpenMP's spinning workers can lose badly to one thread, and the
                # baseline is whichever is faster here.
                cpu = jax.default_backend() == "cpu"
                thread_counts = sorted({1, os.cpu_count()}) if cpu else [torch.get_num_threads()]
                runs = {t: run_hf(hf, prompts, new, reps, t) for t in thread_counts}
                threads, (ref, hp, ht) = min(runs.items(), key=lambda kv: kv[1][2])
                row.update(
                    hf_tok_s=b * new / ht,
                    hf_tok_s_by_threads={t: b * new / r[2] for t, r in runs.items()},
                    hf_threads=threads,
                    hf_prefill_s=hp,
                    hf_decode_step_ms=1e3 * (ht - hp) / (new - 1),
                    speedup=ht / tt,
                    # Random weights give near-flat logits, so float noise can flip a
                    # near-tie and the sequences diverge from there: a sanity check only.
                    same_first_token=float(np.mean(ref[:, 0] == tokens[:, 0])),
                )
            rows[f"batch{b}"] = row
    return {"params": count_params(model), "results": rows}


def decode_vs_position(cfg: ModelConfig, reps: int, steps: int = 48):
    """Decode time per token at position 16 and at position 1000 of the same
    1088-slot cache (prompt buckets 64 / 1024, budgets 1024 / 64), and at position
    16 of a 128-slot cache. The first ratio is the cost of position itself (none
    expected: every step reads the whole cache buffer); the second is the
    attention term of a cache 8.5x longer (on CPU amplified when the longer cache
    no longer fits the last-level cache with the weights)."""
    model = init_model(cfg, seed=0)
    sampler = Sampler(model, eos_ids=[], prompt_buckets=(64, 1024), budget_buckets=(64, 1024))
    rng = np.random.default_rng(0)
    runs = {"pos16": (16, 1024), "pos1000": (1000, 64), "pos16_cache128": (16, 64)}
    prompts = {k: rng.integers(3, cfg.vocab_size, (1, p)).tolist() for k, (p, _) in runs.items()}

    def once(name):
        budget = runs[name][1]
        s = sampler.prefill(prompts[name], budget)
        jax.block_until_ready(s)
        t = time.perf_counter()
        s = sampler.decode(s, until=steps + 1)
        jax.block_until_ready(s)
        assert int(s.step) == steps + 1
        return (time.perf_counter() - t) / steps

    for name in runs:  # compile
        once(name)
    times = {name: [] for name in runs}
    for _ in range(reps):  # interleaved, so load spikes on a shared machine hit all three
        for name in runs:
            times[name].append(once(name))
    best = {name: min(t) for name, t in times.items()}
    return {
        "cache_slots": 1088,
        "ms_per_token_pos16": 1e3 * best["pos16"],
        "ms_per_token_pos1000": 1e3 * best["pos1000"],
        "ratio_same_cache": best["pos1000"] / best["pos16"],
        "ms_per_token_pos16_cache128": 1e3 * best["pos16_cache128"],
        "ratio_vs_cache128": best["pos1000"] / best["pos16_cache128"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--models", nargs="+", help="only these models of the size")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights and compute on both sides (transformers loads the same dtype)",
    )
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    keep_freed_memory()  # before XLA starts its threads: kardia_jax/host.py

    if jax.default_backend() == "gpu":
        # Full f32 matmuls on both sides (torch's default; JAX would use TF32).
        jax.config.update("jax_default_matmul_precision", "highest")
    peaks = {
        "bytes_per_s": measure_bandwidth(),
        "flops_per_s": measure_matmul_peak(dtype=jnp.dtype(args.dtype)),
    }
    report = {
        "command": "python bench/sampler.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "jax": jax.__version__,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "peaks": peaks,
        "models": {},
    }
    for name, make in MODELS[args.size].items():
        if args.models and name not in args.models:
            continue
        cfg = dataclasses.replace(make(), param_dtype=args.dtype, dtype=args.dtype)
        report["models"][name] = bench_model(
            name,
            cfg,
            args.batches,
            args.prompt_len,
            args.new_tokens,
            args.reps,
            peaks,
            not args.no_hf,
        )
    report["decode_vs_position"] = decode_vs_position(tiny(), max(5, args.reps))
    report["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    parts = []
    for name, m in report["models"].items():
        for b, r in m["results"].items():
            s = f"{name} {b}: {r['ours_tok_s']:.0f} tok/s"
            if "hf_tok_s" in r:
                s += f" vs hf {r['hf_tok_s']:.0f} ({r['speedup']:.2f}x)"
            parts.append(s)
    p = report["decode_vs_position"]
    parts.append(f"decode pos1000/pos16 {p['ratio_same_cache']:.2f}")
    print("SUMMARY: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
