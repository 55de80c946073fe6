"""`kardia-jax eval --config FILE --model DIR [--judge DIR] [--data PATH] --workdir DIR
[--sft DIR] [--grpo DIR] [--config.key=value ...]`: generate, score, write
results.json, results.md and report.html in the workdir.

`--model NAME=DIR`, repeated, evaluates Table 2's rows (e.g. `--model Base=/ckpt/base
--model SFT=run/sft/hf --model Kardia-R1=run/grpo/hf`) on the same test turns with
the same judge, each into WORKDIR/<name>/, with one table of all of them."""

from __future__ import annotations

import argparse
import os

from kardia_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/eval_*.py file")
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="policy checkpoint dir (else model.path); or NAME=DIR, repeated, for rows",
    )
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
    distributed.add_arguments(parser)  # joined by kardia_jax/cli.py


def parse_models(values: list[str] | None) -> tuple[str | None, list[tuple[str, str]] | None]:
    """(one policy dir, None) for a plain --model DIR (or none); (None, rows) for
    --model NAME=DIR given once or more. A NAME has no "/", so a dir path with "="
    in a folder name still reads as a dir."""
    from kardia_jax.errors import ConfigError

    if not values:
        return None, None
    rows, plain = [], []
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name and "/" not in name and os.sep not in name and not os.path.exists(v):
            rows.append((name, path))
        else:
            plain.append(v)
    if rows and plain:
        raise ConfigError(
            f"--model: mix of NAME=DIR rows and a plain dir ({plain[0]}): name every row"
        )
    if len(plain) > 1:
        raise ConfigError(
            f"--model given {len(plain)} times: to evaluate several policies, name each "
            "one as NAME=DIR (e.g. --model Base=DIR --model SFT=DIR)"
        )
    return (None, rows) if rows else (plain[0], None)


def main(args) -> int:
    from kardia_jax.config_files import load_config

    with distributed.agreed():  # every process checks; one failure stops them all
        config = load_config(args.config, args.config_overrides)
    with config.unlocked():
        if args.sft is not None:
            config.report.sft = args.sft
        if args.grpo is not None:
            config.report.grpo = args.grpo
    from kardia_jax.checks import stage

    with stage("eval"):
        model, rows = parse_models(args.model)
    if rows:
        return _rows_main(config, rows, args)
    from kardia_jax.eval.run import prepare_eval, run_eval

    with distributed.agreed(), stage("eval"):
        inputs = prepare_eval(config, model, args.workdir, args.data, args.judge)
    r = run_eval(config, model, args.workdir, inputs=inputs)
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


def _rows_main(config, rows: list[tuple[str, str]], args) -> int:
    from kardia_jax.checks import stage
    from kardia_jax.eval.compare import check_rows, evaluate_rows

    with distributed.agreed(), stage("eval"):
        inputs = check_rows(config, rows, args.workdir, data_path=args.data, judge_dir=args.judge)
    r = evaluate_rows(config, rows, args.workdir, inputs=inputs)
    for row in r["rows"]:
        rubric = row["rubric"]
        dims = ", ".join(f"{k} {v:.3f}" for k, v in rubric.items()) if rubric else "not scored"
        print(
            f"{row['name']}: emotion accuracy {row['emotion_accuracy']:.2f}%, format failures "
            f"{row['format_failure_rate']:.2f}%, rubric: {dims}"
        )
    for name in ("results.md", "results.json", "report.html"):
        print(os.path.join(args.workdir, name))
    return 0
