"""`kardia-jax eval --config FILE --model DIR [--judge DIR] [--data PATH] --workdir DIR
[--sft DIR] [--grpo DIR] [--config.key=value ...]`: generate, score, write
results.json, results.md and report.html in the workdir."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/eval_*.py file")
    parser.add_argument("--model", default=None, help="policy checkpoint dir (else model.path)")
    parser.add_argument(
        "--judge",
        default=None,
        help="evaluation judge dir, or openai:MODEL for an OpenAI-compatible endpoint "
        "(OPENAI_BASE_URL, OPENAI_API_KEY); else judge.path",
    )
    parser.add_argument("--data", default=None, help="test data (else data.path; '' = sample)")
    parser.add_argument("--workdir", required=True, help="completions, scores and results")
    parser.add_argument("--sft", default=None, help="SFT workdir or tb/ dir (report curves)")
    parser.add_argument("--grpo", default=None, help="GRPO workdir or tb/ dir (report curves)")


def main(args) -> int:
    from kardia_jax.config_files import load_config

    config = load_config(args.config, args.config_overrides)
    with config.unlocked():
        if args.sft is not None:
            config.report.sft = args.sft
        if args.grpo is not None:
            config.report.grpo = args.grpo
    from kardia_jax.checks import stage
    from kardia_jax.eval.run import prepare_eval, run_eval

    with stage("eval"):
        inputs = prepare_eval(config, args.model, args.workdir, args.data, args.judge)
    r = run_eval(config, args.model, args.workdir, inputs=inputs)
    acc = r["emotion_accuracy"]
    print(
        f"emotion accuracy {acc['value']:.2f}% ({acc['correct']}/{acc['n']}), "
        f"format failures {r['format_failure_rate']['value']:.2f}%"
    )
    if r["rubric"].get("scored"):
        dims = r["rubric"]["dimensions"]
        print("rubric: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in dims.items()))
    else:
        print(f"rubric: not scored ({r['rubric']['reason']})")
    for name in ("results.md", "results.json", "report.html"):
        print(os.path.join(args.workdir, name))
    return 0
