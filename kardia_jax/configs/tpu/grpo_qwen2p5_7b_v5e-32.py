"""GRPO of the SFT'd Qwen2.5-7B policy on a v5e-32 slice (32 chips, topology v5e:4x8,
16 GiB HBM each), the paper's recipe (G = 8, 32 completions per step) with the
frozen reference and a Qwen3-8B judge on the same mesh, rollout and judge caches
included, fitted by the TPU compiler's own figures with at least 10% of HBM to spare
(docs/tpu.md, "Paper runs that fit"):

    kardia-jax compile-check --config configs/tpu/grpo_qwen2p5_7b_v5e-32.py --topology v5e:4x8

The run itself needs --config.model.path=SFT_WORKDIR/hf and
--config.reward.judge_path=/ckpt/Qwen3-8B, as the base config says.
"""

from ml_collections import ConfigDict

from kardia_jax.configs import grpo_qwen2p5_7b


def get_config():
    c = grpo_qwen2p5_7b.get_config()
    c.model.remat = "full"  # save nothing per layer in the update
    c.reward.judge_preset = "qwen3_8b"  # the judge's shape for compile-check
    # compile-check's budget: 90% of the chip's HBM (fails with less than 10% to spare)
    c.compile_check = ConfigDict(dict(hbm_fraction=0.9))
    return c
