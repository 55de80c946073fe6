"""`kardia-jax demo [--workdir DIR]`: the demo pipeline (configs/pipeline_demo.py:
SmolLM2-135M-Instruct as policy and judge on the bundled sample), the same as
`kardia-jax pipeline --config configs/pipeline_demo.py --workdir DIR`."""

from __future__ import annotations

import argparse

from kardia_jax.config_files import BUNDLED_CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="workdir/demo", help="where outputs go")


def main(args) -> int:
    from kardia_jax.pipeline import cli

    args.config = str(BUNDLED_CONFIGS / "pipeline_demo.py")
    args.stages = ",".join(cli.STAGES)
    args.coordinator = args.num_processes = args.process_id = None
    return cli.main(args)
