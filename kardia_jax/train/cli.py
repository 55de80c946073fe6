"""`kardia-jax sft --config FILE --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/*.py file (optionally FILE:ARG)")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and exports")
    parser.add_argument(
        "--coordinator", default=None, help="host:port of process 0 (multi-process)"
    )
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)


def main(args) -> int:
    from kardia_jax.config_files import load_config
    from kardia_jax.train.distributed import maybe_initialize

    maybe_initialize(args.coordinator, args.num_processes, args.process_id)
    config = load_config(args.config, args.config_overrides)
    from kardia_jax.checks import stage
    from kardia_jax.train.sft import prepare_sft, run_sft

    with stage("sft"):
        inputs = prepare_sft(config, args.workdir)
    result = run_sft(config, args.workdir, inputs)
    print(json.dumps({k: v for k, v in result.items() if k != "data_report"}))
    return 0
