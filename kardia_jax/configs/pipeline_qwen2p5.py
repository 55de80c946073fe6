"""The paper's Table 2 run, end to end: Qwen2.5-3B-Instruct policy, SFT on the easy
split (configs/sft_qwen2p5_3b.py), GRPO on the hard split with a Qwen3-8B judge
(configs/grpo_qwen2p5_3b.py), evaluation on the whole test split with an evaluation
judge that is not the training judge: GPT-5-mini through the OpenAI API as in the
paper (key in OPENAI_API_KEY; `--config.eval_judge=DIR` for a local checkpoint, or
OPENAI_BASE_URL for any OpenAI-compatible server). Checkpoints come from a local dir
(or a hub download made beforehand); `model.path` of each stage is filled in by the
pipeline. The base, SFT and final policies are all evaluated (Table 2's rows).

  kardia-jax pipeline --config configs/pipeline_qwen2p5.py --workdir /runs/kardia-3b \
      --config.policy=/ckpt/Qwen2.5-3B-Instruct --config.judge=/ckpt/Qwen3-8B \
      --config.data_path=/data/KardiaBench

On a TPU pod: launch/tpu_run.sh --tpu NAME --zone ZONE -- <the command above>.
For the 7B policy use configs/pipeline_qwen2p5.py:7b.
"""

from pathlib import Path

from kardia_jax.config_files import load_config
from kardia_jax.errors import ConfigError
from kardia_jax.pipeline import pipeline_config

HERE = Path(__file__).resolve().parent


def get_config(size: str = "3b"):
    if size not in ("3b", "7b"):
        raise ConfigError(f"pipeline_qwen2p5.py:{size}: expected 3b or 7b")
    c = pipeline_config()
    c.split.enabled = True  # SFT on easy, GRPO on hard (verdicts if present, else likelihood)
    c.eval_judge = "openai:gpt-5-mini"  # the paper's evaluation judge (OPENAI_API_KEY)
    c.sft = load_config(str(HERE / f"sft_qwen2p5_{size}.py"))
    c.grpo = load_config(str(HERE / f"grpo_qwen2p5_{size}.py"))
    c.eval = load_config(str(HERE / "eval_qwen2p5_3b.py"))
    c.eval.eval.label = f"Qwen2.5-{size.upper()} Kardia (ours)"
    return c
