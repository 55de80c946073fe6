"""SFT step benchmark: tokens/s and MFU of kardia-jax's jitted train step (the one
`kardia-jax sft` runs: donated state, f32 loss, AdamW behind global-norm clipping)
against a PyTorch `transformers` + AdamW step on the same config, weights, batch and
precision, in one run.

    python bench/sft_step.py                          # SmolLM2-135M and Qwen2.5-0.5B shapes, f32
    python bench/sft_step.py --dtype bfloat16         # bf16 compute, f32 parameters on both sides
    python bench/sft_step.py --size tiny              # a 4-layer model: a quick run

MFU = (6 N + attention) FLOPs per token x tokens/s over the matmul peak of the same
precision measured in the same run (the better of JAX's and torch's square matmul),
N the matmul parameters (the tied embedding counts once, as the output projection).
Every position is a target on both sides (the standard causal-LM loss). Prints one
JSON object and a one-line summary; a script, not a test (the load average is
recorded: timings on a shared machine move).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from shapes import MODELS  # bench/shapes.py

from kardia_jax.host import keep_freed_memory
from kardia_jax.models import ModelConfig
from kardia_jax.sharding import make_mesh
from kardia_jax.train.metrics import flops_per_token
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.state import init_train_state
from kardia_jax.train.step import jit_train_step, with_target_index

# configs/sharding/dp.py's table (not loaded from there: no ml_collections needed).
RULES = (("batch", ("data", "fsdp")),) + tuple(
    (a, None)
    for a in ("length", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers")
)


class _Settings(types.SimpleNamespace):
    """Attribute access plus `.get`, as `make_optimizer` reads a ConfigDict (no
    ml_collections needed here)."""

    def get(self, key, default=None):
        return getattr(self, key, default)


# The optimizer settings of `configs/sft_*.py` (the paper's recipe).
TRAIN = _Settings(
    lr=1e-4, warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
    clip_norm=1.0,
)  # fmt: skip


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def set_threads(threads: int) -> int:
    """The same CPU budget for both sides: the process is pinned to `threads` cores
    (XLA sizes its pools from the affinity mask at backend start; torch also gets
    `set_num_threads`). Must run before JAX starts its backend. On a shared, busy
    machine one core per side is the steadier comparison: a two-thread program waits
    at every barrier for a thread the OS has descheduled."""
    if not threads:
        return os.cpu_count()
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    return threads


def matmul_peaks(dtype: str, threads: int, n: int = 2048, reps: int = 3) -> dict:
    """FLOP/s of an [n, n] x [n, n] matmul in `dtype` (f32 accumulation), JAX and torch.
    Probed again before every timed repetition (see `bench_model`): on a shared
    machine one probe can land in a busy moment and make MFU exceed 100%."""
    import torch

    torch.set_num_threads(threads)
    a = jnp.ones((n, n), dtype) / n
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    t_jax = min(timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    ta = torch.ones(n, n, dtype=getattr(torch, dtype)) / n
    ta @ ta
    t_torch = min(timed(lambda: ta @ ta) for _ in range(reps))
    flops = 2 * n**3
    return {"jax": flops / t_jax, "torch": flops / t_torch}


# ------------------------------------------------------------------------ ours
class OursStep:
    def __init__(self, cfg: ModelConfig, batch: dict, remat: str):
        mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
        cfg = cfg.replace(remat=remat)
        self.tx = make_optimizer(TRAIN, 1000)
        self.graphdef, self.state, shardings = init_train_state(cfg, self.tx, mesh, RULES, seed=0)
        # The driver's builder (train/step.py); the batch is placed by device_put.
        self.step = jit_train_step(self.graphdef, self.tx, shardings, None)
        # As the SFT driver prepares it: the target positions listed (here all of them).
        host = with_target_index(batch, batch["input_ids"].shape[1] - 1)
        self.batch = jax.device_put(host)
        t = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t

    def __call__(self):
        self.state, m = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, m))
        return m

    def memory(self) -> dict:
        mem = self.compiled.memory_analysis()
        return {
            "temp_gib": mem.temp_size_in_bytes / 2**30,
            "argument_gib": mem.argument_size_in_bytes / 2**30,
        }


# ---------------------------------------------------------------------- torch
class TorchStep:
    """transformers' causal-LM loss, backward, global-norm clipping, torch AdamW; with
    bf16, autocast over f32 parameters (our policy: f32 params, bf16 matmuls)."""

    def __init__(self, model_dir: str, batch: dict, dtype: str):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32
        ).train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=TRAIN.lr,
            betas=(TRAIN.b1, TRAIN.b2),
            eps=TRAIN.eps,
            weight_decay=TRAIN.weight_decay,
        )
        self.ids = torch.tensor(batch["input_ids"], dtype=torch.long)
        self.mask = torch.tensor(batch["attention_mask"], dtype=torch.long)
        self.bf16 = dtype == "bfloat16"

    def __call__(self, threads: int):
        torch = self.torch
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.model(
                    input_ids=self.ids, attention_mask=self.mask, labels=self.ids
                ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), TRAIN.clip_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        finally:
            torch.set_num_threads(before)
        return float(loss.detach())


def bench_model(name, cfg, args, peaks: dict, threads: int) -> dict:

    from kardia_jax.models import save_hf_model

    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32)
    batch = {
        "input_ids": ids,
        "attention_mask": np.ones((b, t), np.int32),
        "loss_mask": np.ones((b, t), np.int32),
    }
    cfg = cfg.replace(dtype=args.dtype)
    ours = OursStep(cfg, batch, args.remat)
    n_tokens = b * t
    step_flops = n_tokens * flops_per_token(cfg, t)
    row = {"batch": b, "seq": t, "params": cfg.num_params(), "step_flops": step_flops}
    row["ours_compile_s"] = ours.compile_s
    row.update({f"ours_{k}": v for k, v in ours.memory().items()})

    runs = {"ours": [], "torch": []}
    d = tempfile.mkdtemp()
    if not args.no_torch:  # the same initial weights on both sides
        from flax import nnx

        save_hf_model(nnx.merge(ours.graphdef, ours.state.params), d)

    def probe():
        for k, v in matmul_peaks(args.dtype, threads).items():
            peaks[k] = max(peaks[k], v)

    def torch_side():
        step = TorchStep(d, batch, args.dtype)
        return functools.partial(step, threads)

    # The first step's loss on each side, from the same weights: a check that the two
    # compute the same thing.
    first_loss = {"ours": float(ours()["loss"])}
    if args.sequential:
        # Only one side in memory at a time (the 0.5B shape's two AdamW states and
        # activations do not fit this shared machine together).
        for _ in range(args.reps):
            probe()
            runs["ours"].append(timed(ours))
        del ours
        gc.collect()
        if not args.no_torch:
            step = torch_side()
            first_loss["torch"] = step()
            for _ in range(args.reps):
                probe()
                runs["torch"].append(timed(step))
            del step
    else:
        step = None if args.no_torch else torch_side()
        if step is not None:
            first_loss["torch"] = step()
        gc.collect()
        # Interleaved repetitions: a load spike on the shared machine hits both sides.
        for _ in range(args.reps):
            probe()
            runs["ours"].append(timed(ours))
            if step is not None:
                runs["torch"].append(timed(step))
        del ours, step
    shutil.rmtree(d, ignore_errors=True)
    runs = {k: v for k, v in runs.items() if v}
    best = {k: min(v) for k, v in runs.items()}
    peak = max(peaks.values())
    row["matmul_peak_flops"] = dict(peaks)
    row["ours_step_s"] = best["ours"]
    row["ours_tok_s"] = n_tokens / best["ours"]
    row["ours_mfu"] = step_flops / best["ours"] / peak
    row["step_times"] = runs
    row["first_loss"] = first_loss
    row["interleaved"] = not args.sequential
    if "torch" in best:
        row["torch_step_s"] = best["torch"]
        row["torch_tok_s"] = n_tokens / best["torch"]
        row["torch_mfu"] = step_flops / best["torch"] / peak
        row["ratio"] = best["torch"] / best["ours"]
    gc.collect()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--models", nargs="+", help="only these models of the size")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--remat", default="none", help="our remat policy: none|full|dots|...")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch step")
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="time ours, free it, then torch (less memory; not interleaved)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for both sides (0: all cores; 1: XLA's single-threaded Eigen "
        "and torch.set_num_threads(1)); the matmul peak is measured with the same setting",
    )
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    malloc = "kept" if keep_freed_memory() else "system"  # before XLA starts threads
    threads = set_threads(args.threads)

    peaks = matmul_peaks(args.dtype, threads)
    report = {
        "command": "python bench/sft_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "host_malloc": malloc,
        "loadavg_start": os.getloadavg(),
        "jax": jax.__version__,
        "dtype": args.dtype,
        "threads": threads,
        "matmul_peak_flops": peaks,
        "models": {},
    }
    try:
        import torch
        import transformers

        report["torch"], report["transformers"] = torch.__version__, transformers.__version__
    except ImportError:
        args.no_torch = True
    for name, make in MODELS[args.size].items():
        if args.models and name not in args.models:
            continue
        report["models"][name] = bench_model(name, make(), args, peaks, threads)
    report["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    parts = []
    for name, r in report["models"].items():
        s = f"{name} {args.dtype} {r['batch']}x{r['seq']}: ours {r['ours_tok_s']:.0f} tok/s "
        s += f"(MFU {r['ours_mfu']:.0%})"
        if "torch_tok_s" in r:
            s += f" vs torch {r['torch_tok_s']:.0f} (MFU {r['torch_mfu']:.0%}): {r['ratio']:.2f}x"
        parts.append(s)
    print(f"SUMMARY: peak {max(peaks.values()) / 1e9:.0f} GFLOP/s; " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
