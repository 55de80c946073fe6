"""`kardia-jax grpo --config FILE --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import json

from kardia_jax.train import distributed
from kardia_jax.train.cli import add_arguments  # same flags as `sft`

__all__ = ["add_arguments", "main"]


def main(args) -> int:
    from kardia_jax.checks import stage
    from kardia_jax.config_files import load_config
    from kardia_jax.rl.grpo import prepare_grpo, run_grpo

    # Every process checks; all stop with one error if any check fails on any of them.
    with distributed.agreed():
        config = load_config(args.config, args.config_overrides)
        with stage("grpo"):
            inputs = prepare_grpo(config, args.workdir)
    print(json.dumps(run_grpo(config, args.workdir, inputs)))
    return 0
