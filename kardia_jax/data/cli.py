"""`kardia-jax data validate PATH`, `data stats PATH` and `data show PATH --index N`:
thin wrappers over the library (load_dialogues, build_examples, dataset_stats). The
split by the policy's pass rate samples a model, so it is `kardia-jax rl
split-difficulty`."""

from __future__ import annotations

import argparse
import json

from kardia_jax.data.examples import DEFAULT_MAX_LENGTH, EXAMPLE_FORMS, build_examples
from kardia_jax.data.spans import NOTATIONS
from kardia_jax.data.stats import dataset_stats, format_stats
from kardia_jax.data.validate import MODES, load_dialogues
from kardia_jax.errors import DataError

PATH_HELP = (
    "a .jsonl / .json / .parquet file, a folder of them, 'sample' (the bundled sample; "
    "'sample:train', 'sample:test'), or a hub id such as Jhcircle/KardiaBench"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    p.add_argument(
        "--split",
        choices=("train", "test"),
        default=None,
        help="read only this split (a folder's train.* / test.* files, a hub split); default: "
        "every file PATH names (a hub id: train)",
    )
    p.add_argument("--tokenizer", default=None, help="HF tokenizer folder (default: Qwen2.5)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per example")
    p.add_argument("--notation", choices=NOTATIONS, default="special", help="span notation")
    p.add_argument(
        "--example",
        choices=EXAMPLE_FORMS,
        default="turn",
        help="SFT example form (data.example): one per assistant turn, or per dialogue",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="strict",
        help="strict: stop at the first bad record; skip: skip and count bad records",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    _common(sub.add_parser("validate", help="check records and print dataset statistics"))
    stats = sub.add_parser("stats", help="print dataset statistics (skipped records allowed)")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    show = sub.add_parser("show", help="print one example as the model sees it")
    _common(show)
    show.add_argument("--index", type=int, required=True, help="example number (0-based)")


def _load(args):
    from kardia_jax.data.tokenizer import load_tokenizer

    if args.max_length < 16:
        raise DataError(f"--max-length {args.max_length} is too small")
    dialogues, report = load_dialogues(
        args.path, mode=args.mode, notation=args.notation, split=args.split
    )
    tokenizer = load_tokenizer(args.tokenizer)
    examples = build_examples(
        dialogues, tokenizer, max_length=args.max_length, report=report, form=args.example
    )
    return dialogues, examples, report, tokenizer


def validate(args) -> int:
    dialogues, examples, report, _ = _load(args)
    print(f"source: {args.path} (mode {args.mode}, max length {args.max_length})")
    print(format_stats(dataset_stats(dialogues, examples, form=args.example)))
    print(report.summary())
    if not report.clean:
        bad = sum(report.skipped.values()) + sum(report.examples_skipped.values())
        reasons = ", ".join(sorted({*report.skipped, *report.examples_skipped}))
        raise DataError(f"{args.path}: {bad} bad record(s) or example(s) skipped ({reasons})")
    print("OK")
    return 0


def stats(args) -> int:
    """Like validate, but records skipped in skip mode are reported, not a failure."""
    dialogues, examples, report, _ = _load(args)
    result = dataset_stats(dialogues, examples, form=args.example)
    if args.json:
        skipped = {
            "skipped": dict(report.skipped),
            "examples_skipped": dict(report.examples_skipped),
        }
        print(json.dumps({**result, **skipped}))
    else:
        print(format_stats(result))
        print(report.summary())
    return 0


def show(args) -> int:
    _, examples, _, tokenizer = _load(args)
    if not 0 <= args.index < len(examples):
        raise DataError(f"--index {args.index} is out of range: {len(examples)} examples")
    ex = examples[args.index]
    target = ex.input_ids[ex.loss_mask.astype(bool)]
    whole = args.example == "dialogue"
    turn = f"up to messages[{ex.turn}]" if whole else f"messages[{ex.turn}]"
    print(f"example {args.index}: {ex.location}, {turn}, gold emotion {ex.emotion}")
    print(
        f"tokens: {len(ex)} (prompt {ex.prompt_length}, loss on {len(target)}), "
        f"{'latest' if whole else 'oldest'} exchanges dropped to fit: {ex.dropped_turns}"
    )
    print("=" * 30 + " prompt " + "=" * 30)
    print(tokenizer.decode(ex.prompt_ids.tolist()), end="")
    print("=" * 22 + " target (loss on these) " + "=" * 22)
    print(tokenizer.decode(target.tolist()))
    return 0


def main(args) -> int:
    commands = {"validate": validate, "stats": stats, "show": show}
    return commands[args.data_command](args)
