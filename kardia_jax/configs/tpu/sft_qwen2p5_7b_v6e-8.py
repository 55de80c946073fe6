"""Cold-start SFT of Qwen2.5-7B on a v6e-8 slice (8 chips, topology v6e:2x4,
32 GiB HBM each): the paper's global batch 128 x 2048 tokens, fitted by the TPU
compiler's own figures with at least 10% of HBM to spare (docs/tpu.md, "Paper runs
that fit"):

    kardia-jax compile-check --config configs/tpu/sft_qwen2p5_7b_v6e-8.py --topology v6e:2x4
"""

from ml_collections import ConfigDict

from kardia_jax.configs import sft_qwen2p5_7b


def get_config():
    c = sft_qwen2p5_7b.get_config()
    c.model.remat = "full"  # save nothing per layer: the 128 x 2048 batch's activations
    c.train.microbatches = 8  # 2 sequences per chip per microbatch
    # compile-check's budget: 90% of the chip's HBM (fails with less than 10% to spare)
    c.compile_check = ConfigDict(dict(hbm_fraction=0.9))
    return c
