"""`kardia-jax report --eval DIR [--sft DIR] [--grpo DIR] [--out FILE]`: rebuilds
report.html from a finished eval workdir and the training runs' JSONL logs (no model
loaded). A rows workdir (`kardia-jax eval --model NAME=DIR ...`) gives every row in
the table and each sample turn's answers side by side."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval", required=True, help="eval workdir, one policy's or rows' (holds results.json)"
    )
    # Their JSONL logs (train_log, eval_log; grpo_log, selection) give the curves.
    parser.add_argument("--sft", default=None, help="SFT workdir (or its tb/ dir)")
    parser.add_argument("--grpo", default=None, help="GRPO workdir (or its tb/ dir)")
    parser.add_argument("--out", default=None, help="output file (default: EVAL/report.html)")
    parser.add_argument("--samples", type=int, default=20, help="sample dialogues shown")
    parser.add_argument("--seed", type=int, default=0, help="which samples are shown")


def main(args) -> int:
    from kardia_jax.eval.report import write_report

    out = args.out or os.path.join(args.eval, "report.html")
    write_report(
        out,
        args.eval,
        run_dirs={"sft": args.sft, "grpo": args.grpo},
        samples=args.samples,
        seed=args.seed,
    )
    print(out)
    return 0
