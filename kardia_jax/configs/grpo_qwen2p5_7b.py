"""GRPO of the SFT'd Qwen2.5-7B policy with the paper's recipe: G = 8, global batch
32 completions (4 prompts), lr 1e-6, 2 epochs over the hard split, reward 1/3 format
+ 1/3 emotion + 1/3 rubric from a Qwen3-8B judge on the same mesh, the best checkpoint
across RL epochs. The 3B run's settings (configs/grpo_qwen2p5_3b.py) with the 7B shape.

  --config.model.path=SFT_WORKDIR/hf --config.reward.judge_path=/ckpt/Qwen3-8B
  --config.data.path=/data/KardiaBench
"""

from pathlib import Path

from kardia_jax.config_files import load_config


def get_config():
    c = load_config(str(Path(__file__).resolve().parent / "grpo_qwen2p5_3b.py"))
    c.model.preset = "qwen2p5_7b"  # shape check only; model.path is required
    return c
