"""Scaling measurements: peak memory of the log-prob computation against sequence
length and chunk size for a 152k vocabulary, peak memory of the SFT step against
sequence length (both from XLA's memory analysis of the compiled programs: nothing
runs), and SFT step time against batch size (timed).

    python bench/scaling.py                       # all three
    python bench/scaling.py --only logprobs       # or memory, batch

Decode time per step against position is in bench/sampler.py. Prints one JSON
object and a one-line summary; a script, not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.host import keep_freed_memory
from kardia_jax.models import abstract_model, get_preset
from kardia_jax.models.logprobs import token_log_probs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sft_step import RULES, TRAIN, OursStep  # noqa: E402
from shapes import smollm2_135m, tiny  # noqa: E402

GIB = 2**30


def _compiled_memory(fn, *args) -> dict:
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)  # a step factory's program as it is
    mem = jitted.lower(*args).compile().memory_analysis()
    return {
        "temp_gib": mem.temp_size_in_bytes / GIB,
        "argument_gib": mem.argument_size_in_bytes / GIB,
        "output_gib": mem.output_size_in_bytes / GIB,
    }


def logprob_memory(lengths, chunks, batch: int = 1) -> dict:
    """Temporaries of value-and-gradient of the summed target log-probs, wrt the
    hidden states and the tied [V, D] head, for Qwen2.5-0.5B's head (V = 151,936,
    D = 896, f32): chunked (`token_log_probs`) at each chunk size against the plain
    form that materialises [B, T, V] logits."""
    cfg = get_preset("qwen2p5_0p5b").replace(num_layers=1, dtype="float32")
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    v, d = cfg.vocab_size, cfg.hidden_size

    def chunked(params, h, y, chunk):
        model = nnx.merge(graphdef, params)
        return jnp.sum(token_log_probs(model, h, y, chunk=chunk))

    def plain(params, h, y):
        model = nnx.merge(graphdef, params)
        logp = jax.nn.log_softmax(model.logits(h), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, y[..., None], axis=-1))

    rows = []
    for t in lengths:
        h = jax.ShapeDtypeStruct((batch, t, d), jnp.float32)
        y = jax.ShapeDtypeStruct((batch, t), jnp.int32)
        row = {"T": t, "full_logits_gib": batch * t * v * 4 / GIB}
        grad = jax.value_and_grad(plain, argnums=(0, 1))
        row["plain"] = _compiled_memory(grad, params, h, y)["temp_gib"]
        for c in chunks:
            if c > t:
                continue
            grad = jax.value_and_grad(functools.partial(chunked, chunk=c), argnums=(0, 1))
            row[f"chunk{c}"] = _compiled_memory(grad, params, h, y)["temp_gib"]
        rows.append(row)
    return {
        "vocab": v,
        "hidden": d,
        "batch": batch,
        "head_gib": v * d * 4 / GIB,
        "one_chunk_logits_gib": {c: batch * c * v * 4 / GIB for c in chunks},
        "temp_gib": rows,
    }


def step_memory(lengths, remats, batch: int = 1) -> dict:
    """Per-device memory of the compiled SFT step (SmolLM2-135M shape, scanned layers,
    one device) against sequence length, for each remat policy."""
    from kardia_jax.sharding import make_mesh
    from kardia_jax.train.optim import make_optimizer
    from kardia_jax.train.state import abstract_train_state, state_shardings
    from kardia_jax.train.step import jit_train_step

    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx = make_optimizer(TRAIN, 1000)
    rows = []
    for remat in remats:
        cfg = smollm2_135m().replace(scan_layers=True, remat=remat, dtype="float32")
        graphdef, abstract = abstract_train_state(cfg, tx, mesh, RULES)
        sh = state_shardings(abstract, tx, mesh, RULES)
        state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sh
        )
        fn = jit_train_step(graphdef, tx, sh, None)  # as the driver builds it
        for t in lengths:
            i32 = jax.ShapeDtypeStruct((batch, t), jnp.int32)
            k = jax.ShapeDtypeStruct((batch, t - 1), jnp.int32)
            b = {
                "input_ids": i32,
                "attention_mask": i32,
                "loss_mask": i32,
                "target_index": k,
                "target_weight": k,
            }
            mem = _compiled_memory(fn, state, b)
            rows.append({"remat": remat, "T": t, **mem})
    return {"model": "smollm2_135m (scan_layers)", "batch": batch, "rows": rows}


def step_time_vs_batch(batches, seq: int, model: str, reps: int) -> dict:
    cfg = {"tiny": tiny, "smollm2_135m": smollm2_135m}[model]().replace(dtype="float32")
    rows = []
    for b in batches:
        rng = np.random.default_rng(b)
        batch = {
            "input_ids": rng.integers(3, cfg.vocab_size, (b, seq)).astype(np.int32),
            "attention_mask": np.ones((b, seq), np.int32),
            "loss_mask": np.ones((b, seq), np.int32),
        }
        ours = OursStep(cfg, batch, "none")
        ours()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            ours()
            times.append(time.perf_counter() - t)
        best = min(times)
        rows.append({"batch": b, "step_s": best, "tok_s": b * seq / best})
        del ours
    base = rows[0]
    for r in rows:
        r["time_per_row_vs_first"] = (r["step_s"] / r["batch"]) / (base["step_s"] / base["batch"])
    return {"model": model, "seq": seq, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("logprobs", "memory", "batch"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--batch-model", default="tiny", choices=("tiny", "smollm2_135m"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    keep_freed_memory()  # before XLA starts its threads: kardia_jax/host.py

    report = {
        "command": "python bench/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "jax": jax.__version__,
    }
    parts = []
    if args.only in (None, "logprobs"):
        r = report["logprobs"] = logprob_memory(args.lengths, args.chunks)
        last = r["temp_gib"][-1]
        c = args.chunks[1] if len(args.chunks) > 1 else args.chunks[0]
        parts.append(
            f"log-probs T={last['T']}: plain {last['plain']:.2f} GiB vs chunk {c} "
            f"{last.get(f'chunk{c}', float('nan')):.2f} GiB temporaries"
        )
    if args.only in (None, "memory"):
        r = report["step_memory"] = step_memory(args.lengths, ("none", "full"))
        by = {(x["remat"], x["T"]): x["temp_gib"] for x in r["rows"]}
        t = args.lengths[-1]
        parts.append(
            f"SFT step T={t}: temporaries {by[('none', t)]:.2f} GiB (remat none) vs "
            f"{by[('full', t)]:.2f} GiB (full)"
        )
    if args.only in (None, "batch"):
        r = report["step_time_vs_batch"] = step_time_vs_batch(
            args.batches, 512, args.batch_model, args.reps
        )
        parts.append(
            "step s by batch: " + ", ".join(f"{x['batch']}: {x['step_s']:.2f}" for x in r["rows"])
        )
    report["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print("SUMMARY: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
