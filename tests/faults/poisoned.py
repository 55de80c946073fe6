"""`python -m tests.faults.poisoned sft ...`: the CLI with one training batch whose
loss and gradients come out NaN (the step named by KARDIA_FAULT_NAN_STEP, from 1).

Token ids cannot be NaN: a real NaN batch is one whose numbers overflow on the way
through the model. So every batch carries a `poison` column of ones, NaN for the chosen
step, and the token loss is multiplied by it: NaN spreads to the loss and to every
gradient, the token count stays what it is. Only training batches pass through
here while eval.every is 0 (the held-out loss at the end comes after the last step)."""

import os
import sys

import numpy as np


def main() -> int:
    from kardia_jax import cli
    from kardia_jax.train import sft, step

    poisoned_step = int(os.environ["KARDIA_FAULT_NAN_STEP"])
    host_rows, token_nll = sft.host_rows, step.sum_token_nll
    seen = 0

    def rows(batch):
        nonlocal seen
        seen += 1
        n = len(batch["input_ids"])
        poison = np.full((n, 1), np.nan if seen == poisoned_step else 1.0, np.float32)
        return host_rows({**batch, "poison": poison})

    def nll(graphdef, params, batch, *args, **kwargs):
        batch = dict(batch)
        poison = batch.pop("poison")
        total, tokens = token_nll(graphdef, params, batch, *args, **kwargs)
        return total * poison.mean(), tokens

    sft.host_rows, step.sum_token_nll = rows, nll
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
