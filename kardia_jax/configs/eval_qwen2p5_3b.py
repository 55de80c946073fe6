"""Evaluation of a Qwen2.5-3B Kardia policy on the KardiaBench test split (20,290
turns), as in the paper's Table 2, with a separate evaluation judge (the paper used
GPT-5-mini; an open judge such as Qwen3-8B is our stand-in):

  kardia-jax eval --config configs/eval_qwen2p5_3b.py --model GRPO_WORKDIR/hf \
      --judge /ckpt/Qwen3-8B --data /data/KardiaBench/test.jsonl --workdir /runs/eval \
      --sft SFT_WORKDIR --grpo GRPO_WORKDIR

Generation and judging append to the workdir as they go: rerun the same command to
resume. `--config.eval.limit=2000` evaluates a seeded random subset first.
"""

from kardia_jax.eval.config import eval_config


def get_config():
    c = eval_config()
    c.sharding = "fsdp"  # policy and judge (loaded after the policy is freed) on one mesh
    c.data.max_length = 3072
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 384
    c.judge.batch_size = 256
    c.judge.max_batch = 32
    return c
