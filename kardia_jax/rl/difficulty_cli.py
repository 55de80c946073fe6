"""`kardia-jax rl split-difficulty --model DIR --data PATH`: easy / hard files by the
policy's own pass rate, a thin wrapper over rl.difficulty (the model stack is
imported only when it runs). It lives with RL because it samples and scores a policy."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kardia_jax.data.cli import PATH_HELP
from kardia_jax.data.validate import MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rl_command", metavar="ACTION")
    sub.required = True
    _split_arguments(
        sub.add_parser(
            "split-difficulty",
            help="easy / hard files by the policy's mean reward (pass rate) per dialogue",
        )
    )


def _split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="policy checkpoint (Hugging Face dir)")
    p.add_argument("--data", required=True, metavar="PATH", help=PATH_HELP)
    p.add_argument("--out", default="difficulty", help="folder for easy.jsonl, hard.jsonl, report")
    p.add_argument("--samples", type=int, default=8, help="completions per prompt")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="easy iff a dialogue's mean reward >= this"
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per completion")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turns", choices=("all", "last"), default="all", help="turns to sample")
    p.add_argument("--judge", default=None, help="judge checkpoint dir (rubric reward)")
    p.add_argument("--judge-dtype", default="bfloat16")
    p.add_argument(
        "--weights",
        type=float,
        nargs=3,
        metavar=("FORMAT", "EMOTION", "RUBRIC"),
        default=None,
        help="reward weights (default: 1/3 each with --judge, else 1/2 format + 1/2 emotion)",
    )
    p.add_argument("--dtype", default="bfloat16", help="policy parameter dtype")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the model's)")
    p.add_argument("--max-length", type=int, default=1536, help="prompt tokens")
    p.add_argument("--split", choices=("train",), default="train", help="the train split is split")
    p.add_argument("--mode", choices=MODES, default="strict", help="strict or skip bad records")


def split_difficulty(args) -> int:
    from kardia_jax.rl.difficulty import DifficultySettings, split_difficulty

    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print(f"sampled {done}/{total} prompts ({rate:.2f} prompts/s)", file=sys.stderr)

    settings = DifficultySettings(
        samples=args.samples,
        threshold=args.threshold,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        batch_size=args.batch_size,
        seed=args.seed,
        turns=args.turns,
    )
    result = split_difficulty(
        args.model,
        args.data,
        args.out,
        settings,
        tokenizer_dir=args.tokenizer,
        judge_dir=args.judge,
        judge_dtype=args.judge_dtype,
        weights=tuple(args.weights) if args.weights else None,
        dtype=args.dtype,
        max_length=args.max_length,
        mode=args.mode,
        split=args.split,
        progress=progress,
    )
    print(json.dumps(result))
    return 0


def main(args) -> int:
    commands = {"split-difficulty": split_difficulty}
    return commands[args.rl_command](args)
