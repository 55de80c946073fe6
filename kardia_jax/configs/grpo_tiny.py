"""GRPO on CPU in seconds per step: the tiny SFT policy (run configs/sft_tiny.py
first, then pass --config.model.path=SFT_WORKDIR/hf) on the bundled sample, with the
format + emotion reward (no judge model: rubric weight 0 unless reward.judge_path is
set). For tests and the demo."""

from kardia_jax.rl.config import grpo_config


def get_config():
    c = grpo_config()
    c.model.compute_dtype = "float32"  # bf16 matmuls are slower than f32 on CPU
    c.data.max_length = 512
    c.data.buckets = (256, 512)
    c.rollout.global_batch = 16  # completions per step: 4 prompts x 4
    c.rollout.group_size = 4
    c.rollout.max_new_tokens = 32
    c.reward.format = 0.5  # no judge on CPU by default: format and emotion only
    c.reward.emotion = 0.5
    c.reward.rubric = 0.0
    c.reward.judge_dtype = "float32"
    c.grpo.reference_path = ""  # the SFT policy itself
    c.train.lr = 1e-4  # tiny policies move little at the paper's 1e-6
    c.train.warmup_steps = 0
    c.train.steps = 4
    c.checkpoint.every = 2
    c.log.peak_tflops = 0.2
    # Best-checkpoint selection kept cheap: a few held-out prompts every other step
    # (answers as long as the rollouts').
    c.select.every = 2
    c.select.heldout_fraction = 0.2  # the sample has 12 training profiles: hold out ~2
    c.select.prompts = 8
    return c
