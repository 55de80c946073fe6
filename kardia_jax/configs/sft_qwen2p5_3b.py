"""Cold-start SFT of Qwen2.5-3B-Instruct (the paper's Table 2 backbone), the paper's recipe: full
parameters, 2 epochs over the easy split, AdamW at lr 1e-4, global batch 128.

Start from the instruct checkpoint with --config.model.path=DIR (config.json +
safetensors); without it the preset shape is initialised randomly, which is only
useful for `compile-check` planning. For a TPU pod: launch/tpu_run.sh.
"""

from kardia_jax.train.config import sft_config


def get_config():
    c = sft_config()
    c.model.preset = "qwen2p5_3b"  # shape when model.path is empty
    c.model.scan_layers = True  # one compiled layer: compile time independent of depth
    c.model.remat = "dots_no_batch"  # keep matmul outputs, recompute the rest
    c.sharding = "fsdp"  # parameters + AdamW state split over every chip
    # The paper's trainer (ms-swift) trains a multi-turn record as one sequence with
    # loss on every assistant turn, on the whole easy split: no held-out profiles
    # (withholding 5% for an eval loss is ours, the sft_config() default).
    c.data.example = "dialogue"
    c.data.heldout_fraction = 0.0
    c.train.microbatches = 1  # raise when 128 x 2048 tokens do not fit activations
    return c
