"""The evaluation run settings: every field with a comment and a default. The paper
evaluates on the whole test split and does not publish its decoding settings; greedy
decoding is our documented choice (one deterministic answer per prompt)."""

from ml_collections import ConfigDict

from kardia_jax.errors import ConfigError
from kardia_jax.rewards.api_judge import ApiJudgeConfig
from kardia_jax.rewards.judge import JudgeConfig, judge_config_from_section, judge_section


def eval_config() -> ConfigDict:
    """Defaults for a real run (a 3B-7B policy, a separate 8B judge, on a mesh);
    `configs/eval_*.py` change what their setting needs."""
    c = ConfigDict()
    # "" = one device, no mesh (on several processes: dp over every device of every
    # host); else a preset in configs/sharding/
    c.sharding = ""
    c.mesh = ConfigDict(dict(data=0, fsdp=0, tensor=0))  # axis-size overrides (see sft)
    c.dcn_mesh = ConfigDict(dict(data=1, fsdp=1, tensor=1))

    c.model = ConfigDict()
    c.model.path = ""  # the policy's Hugging Face dir (the --model flag wins)
    c.model.param_dtype = "bfloat16"  # inference only: bf16 weights halve memory
    c.model.compute_dtype = "bfloat16"

    c.data = ConfigDict()
    c.data.path = ""  # KardiaBench test file/dir or hub id ("" = bundled sample, test split)
    c.data.split = "test"  # hub split (a local file is read as given)
    c.data.tokenizer = ""  # "" = the policy dir's own tokenizer (else built-in Qwen2.5)
    c.data.mode = "strict"  # strict: stop at a bad record; skip: count and skip it
    c.data.max_length = 4096  # prompt tokens; older turns are dropped to fit

    c.eval = ConfigDict()
    c.eval.max_new_tokens = 384  # four spans average ~170 tokens in the paper's data
    c.eval.batch_size = 32  # prompts per sampler call; completions are flushed per batch
    c.eval.temperature = 0.0  # 0 = greedy (unpublished in the paper)
    c.eval.top_p = 1.0
    c.eval.top_k = 0
    c.eval.limit = 0  # > 0: a seeded random subset of this many test turns (0 = all)
    c.eval.seed = 0  # subset choice, sampling, bootstrap and report samples
    c.eval.bootstrap = 1000  # percentile-bootstrap resamples for the 95% intervals
    # "dialogue": resample whole dialogues (their turns share persona, situation and
    # usually the gold label, so they are not independent); "example": single turns.
    c.eval.bootstrap_unit = "dialogue"
    c.eval.samples_in_report = 20  # dialogues shown in report.html
    c.eval.label = ""  # how our row is named in the table ("" = the model dir's name)

    c.judge = ConfigDict()
    # evaluation judge: a checkpoint dir, or openai:MODEL for any OpenAI-compatible
    # endpoint (OPENAI_BASE_URL, OPENAI_API_KEY); --judge wins; "" = rubric not scored
    c.judge.path = ""
    c.judge.dtype = "bfloat16"
    c.judge.batch_size = 64  # completions per judge call; scores are flushed per call
    c.judge.update(judge_section())  # rubric, mode, buckets...: as GRPO's reward.judge
    # judge.path = openai:MODEL only (docs/evaluation.md). rubric and show_reasoning
    # above apply to it too; batch_size is how many items go to it per call.
    c.judge.api = ConfigDict()
    a = ApiJudgeConfig()
    c.judge.api.concurrency = a.concurrency  # requests in flight at once
    c.judge.api.max_retries = a.max_retries  # per item: 429, 5xx, timeout, connection, bad reply
    c.judge.api.timeout_s = a.timeout_s  # per request
    # 0 = greedy where the server allows; a negative value = not sent (the server's
    # default). A server that refuses it (GPT-5 models) gets it dropped and counted.
    c.judge.api.temperature = a.temperature
    # E[score] over "1".."5" from this many top logprobs per token; 0 = integer scores.
    # A server that refuses logprobs gets integer scores, counted in results.json.
    c.judge.api.top_logprobs = a.top_logprobs
    c.judge.api.reasoning_effort = a.reasoning_effort  # "" = not sent; e.g. "minimal"
    c.judge.api.backoff_s = a.backoff_s  # first retry delay, doubled per retry, jittered
    c.judge.api.max_backoff_s = a.max_backoff_s
    c.judge.api.abort_after_failures = a.abort_after_failures  # failed items in a row: stop
    # Items with no valid reply after max_retries get no score: excluded from the rubric
    # means and counted in results.json; more than this fraction of the examples
    # failing is an error (rerun the eval to retry them: judged items are cached).
    c.judge.api.max_failure_fraction = 0.01

    c.report = ConfigDict()
    c.report.sft = ""  # SFT workdir or its tb/ folder, for training curves ("" = none)
    c.report.grpo = ""  # GRPO workdir or its tb/ folder
    return c


def judge_settings(jcfg: ConfigDict) -> JudgeConfig:
    """The `judge` section's judge settings (not path, dtype, batch_size or api)."""
    return judge_config_from_section({k: jcfg[k] for k in judge_section()}, "judge")


def api_judge_settings(jcfg: ConfigDict) -> ApiJudgeConfig:
    """The `judge.api` section (plus `judge.rubric` / `show_reasoning`) as settings."""
    a = jcfg.api
    keys = ("concurrency", "max_retries", "timeout_s", "top_logprobs", "reasoning_effort")
    keys += ("backoff_s", "max_backoff_s", "abort_after_failures")
    temperature = None if a.temperature is None or a.temperature < 0 else float(a.temperature)
    return ApiJudgeConfig(
        rubric=jcfg.rubric,
        show_reasoning=jcfg.show_reasoning,
        temperature=temperature,
        **{k: a[k] for k in keys},
    )


def max_failure_fraction(jcfg: ConfigDict) -> float:
    f = float(jcfg.api.max_failure_fraction)
    if not 0 <= f <= 1:
        raise ConfigError(f"judge.api.max_failure_fraction={f}: need 0..1")
    return f
