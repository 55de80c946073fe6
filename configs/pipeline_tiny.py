"""The whole pipeline in about a minute on a CPU, for CI: a tiny random-init
Qwen2-shaped policy (configs/sft_tiny.py's shape), no judge model (format + emotion
reward only), a few steps per stage on the bundled sample. Its numbers mean
nothing; it proves the stages connect, resume and report.

  kardia-jax pipeline --config configs/pipeline_tiny.py --workdir /tmp/kardia-tiny
"""

from pathlib import Path

from kardia_jax.config_files import load_config
from kardia_jax.pipeline import pipeline_config

HERE = Path(__file__).resolve().parent


def get_config():
    c = pipeline_config()
    c.policy = ""  # random init from sft.model.init
    c.judge = ""  # no judge: the rubric weight is 0 and eval reports rubric as not scored

    c.sft = load_config(str(HERE / "sft_tiny.py"))
    c.sft.train.steps = 6
    c.sft.checkpoint.every = 3
    c.sft.log.every = 1

    c.grpo = load_config(str(HERE / "grpo_tiny.py"))
    c.grpo.rollout.prompts_per_step = 2
    c.grpo.rollout.group_size = 4
    c.grpo.rollout.max_new_tokens = 16
    c.grpo.train.steps = 4
    c.grpo.checkpoint.every = 1

    c.eval = load_config(str(HERE / "eval_tiny.py"))
    c.eval.eval.limit = 8  # test turns scored
    c.eval.eval.max_new_tokens = 32
    c.eval.eval.batch_size = 8
    c.eval.eval.bootstrap = 200
    return c
