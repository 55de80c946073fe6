"""Evaluation of Qwen2.5-3B policies on the KardiaBench test split (20,290 turns) as
in the paper's Table 2: the base, SFT and Kardia-R1 rows on the same turns, scored by
GPT-5-mini through the OpenAI API (OPENAI_API_KEY; OPENAI_BASE_URL for any
OpenAI-compatible server; `--judge DIR` for a local checkpoint instead). The
evaluation judge must not be the training judge (Qwen3-8B in the paper).

  kardia-jax eval --config configs/eval_qwen2p5_3b.py --data /data/KardiaBench \
      --model Base=/ckpt/Qwen2.5-3B-Instruct --model SFT=SFT_WORKDIR/hf \
      --model Kardia-R1=GRPO_WORKDIR/hf --workdir /runs/eval

Generation and judging append to the workdir as they go: rerun the same command to
resume. `--config.eval.limit=2000` evaluates a seeded random subset first.
"""

from kardia_jax.eval.config import eval_config


def get_config():
    c = eval_config()
    c.sharding = "fsdp"  # policy and judge (loaded after the policy is freed) on one mesh
    c.judge.path = "openai:gpt-5-mini"  # paper: GPT-5-mini
    c.judge.api.temperature = -1.0  # GPT-5 models take only their default temperature
    c.data.max_length = 3072
    c.eval.batch_size = 64
    c.eval.max_new_tokens = 384
    c.judge.batch_size = 256
    c.judge.max_batch = 32
    return c
