"""`kardia-jax demo`: runs every pipeline stage that has landed, end to end, on the
embedded default (the bundled sample data and a tiny Qwen2.5-shaped model), so a
newcomer sees the whole path in a few minutes on a laptop CPU."""

from __future__ import annotations

import argparse
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="workdir/demo", help="where outputs go")
    parser.add_argument("--seed", type=int, default=0)


def _stage(name: str):
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def main(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from kardia_jax.models import (
        ModelConfig,
        count_params,
        init_model,
        load_hf_model,
        save_hf_model,
    )

    os.makedirs(args.workdir, exist_ok=True)

    t = _stage("model: tiny Qwen2.5-shaped decoder -> Hugging Face checkpoint -> reload")
    cfg = ModelConfig(
        family="qwen2",
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1e6,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = init_model(cfg, seed=args.seed)
    ckpt = os.path.join(args.workdir, "init_model")
    save_hf_model(model, ckpt)
    reloaded = load_hf_model(ckpt)
    ids = np.random.default_rng(args.seed).integers(2, cfg.vocab_size, size=(2, 16))
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padding
    diff = float(jnp.abs(model(ids, mask) - reloaded(ids, mask)).max())
    print(f"{count_params(model):,} parameters; wrote {ckpt}; reload max |logit diff| {diff:.1e}")
    if diff != 0.0:
        raise SystemExit("demo: the reloaded checkpoint does not reproduce the model")
    print(f"   ({time.perf_counter() - t:.1f} s)")
    return 0
