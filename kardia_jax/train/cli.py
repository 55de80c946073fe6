"""`kardia-jax sft --config FILE --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import json

from kardia_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/*.py file (optionally FILE:ARG)")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and exports")
    distributed.add_arguments(parser)  # joined by kardia_jax/cli.py


def main(args) -> int:
    from kardia_jax.checks import stage
    from kardia_jax.config_files import load_config
    from kardia_jax.train.sft import prepare_sft, run_sft

    # Every process checks; all stop with one error if any check fails on any of them.
    with distributed.agreed():
        config = load_config(args.config, args.config_overrides)
        with stage("sft"):
            inputs = prepare_sft(config, args.workdir)
    result = run_sft(config, args.workdir, inputs)
    print(json.dumps({k: v for k, v in result.items() if k != "data_report"}))
    return 0
