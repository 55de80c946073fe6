"""`python -m tests.faults.poisoned sft ...`: the CLI with one training batch that
makes the loss NaN (the step named by KARDIA_FAULT_NAN_STEP, counted from 1).

Token ids cannot be NaN; a real NaN batch comes from what weighs the tokens, so the
target weights go in as float32 (the values the loss would cast them to) and the
chosen step's are NaN. Only training batches pass through here while eval.every is 0
(the held-out loss at the end comes after the last step)."""

import os
import sys

import numpy as np


def main() -> int:
    from kardia_jax import cli
    from kardia_jax.train import sft

    poisoned_step = int(os.environ["KARDIA_FAULT_NAN_STEP"])
    host_rows = sft.host_rows
    seen = 0

    def rows(batch):
        nonlocal seen
        seen += 1
        batch = dict(batch)
        key = "target_weight" if "target_weight" in batch else "loss_mask"
        weight = np.asarray(batch[key], np.float32)
        if seen == poisoned_step:
            weight = np.where(weight > 0, np.float32("nan"), weight)
        batch[key] = weight
        return host_rows(batch)

    sft.host_rows = rows
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
