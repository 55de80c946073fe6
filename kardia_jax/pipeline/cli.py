"""`kardia-jax pipeline --config configs/pipeline_demo.py --workdir DIR`: both splits
validated -> (easy / hard curriculum of train) -> SFT -> GRPO -> eval of the Base,
SFT and final rows on test -> report; rerun to resume."""

from __future__ import annotations

import argparse
import os

from kardia_jax.pipeline.stages import STAGES
from kardia_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/pipeline_*.py")
    parser.add_argument("--workdir", required=True, help="every stage's outputs; rerun to resume")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)} (default: all, in order)",
    )
    distributed.add_arguments(parser)  # joined by kardia_jax/cli.py


def main(args) -> int:
    from kardia_jax.config_files import load_config
    from kardia_jax.pipeline.stages import run_pipeline

    with distributed.agreed():  # a bad config stops every process with one error
        config = load_config(args.config, args.config_overrides)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    done = run_pipeline(config, args.workdir, stages)
    if "eval" in done:
        print(f"\nresults table: {os.path.join(args.workdir, 'eval', 'results.md')}")
    if "report" in done:
        print(f"report: {done['report']['report']}")
    return 0
