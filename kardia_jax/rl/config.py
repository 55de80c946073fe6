"""The GRPO run settings: every field with a comment and a default. The paper gives
G = 8, 32 prompts per step, lr 1e-6, 2 epochs; it does not publish beta, clip
epsilon, lengths or temperature, so those are our documented choices."""

from ml_collections import ConfigDict

from kardia_jax.train.config import sft_config


def grpo_config() -> ConfigDict:
    c = sft_config()  # shared: seed, sharding, mesh, model, data, checkpoint, log
    c.model.path = ""  # the SFT policy (Hugging Face dir, e.g. an SFT run's WORKDIR/hf)
    c.data.heldout_fraction = 0.0  # GRPO has no held-out loss
    c.data.max_length = 1536  # prompt tokens; older turns are dropped to fit
    c.data.buckets = (512, 1024, 1536)

    c.rollout = ConfigDict()
    c.rollout.prompts_per_step = 32  # paper: global batch 32 prompts
    c.rollout.group_size = 8  # paper: G = 8
    c.rollout.max_new_tokens = 256  # four spans average ~170 tokens in the paper's data
    c.rollout.temperature = 1.0  # unpublished; 1.0 samples the policy itself
    c.rollout.top_p = 1.0  # filters change the sampling distribution: keep off for GRPO
    c.rollout.top_k = 0
    # With model.scan_layers, decode through unrolled copies of the layer weights: a
    # layer scan slices every layer's weights and cache at each decode step, which
    # costs most where decoding is memory-bound (CPU, small batches).
    c.rollout.unroll_layers = False
    # Log-probs of the sampled tokens under the policy that sampled them (the ratio's
    # denominator): "recompute" runs one forward before the update (exact for the
    # update's numerics), "sampler" takes the sampler's (no extra forward; they differ
    # from the update's by the numerics of the KV-cache path, bf16 especially).
    c.rollout.old_logp = "recompute"
    c.rollout.dynamic_sampling = True  # refill zero-variance groups with fresh prompts (DAPO)
    c.rollout.max_refill_rounds = 2  # extra prompt batches drawn per step at most
    c.rollout.mask_truncated = False  # drop completions cut at max_new_tokens from the loss
    # Zero-variance groups left in the batch (all of them without dynamic sampling, or
    # when the refills ran out): False keeps them (advantage 0: KL only), True drops
    # them from the loss entirely.
    c.rollout.mask_zero_variance = False

    c.reward = ConfigDict()
    c.reward.judge_path = ""  # judge checkpoint dir ("" = no judge: rubric weight must be 0)
    c.reward.judge_dtype = "bfloat16"
    c.reward.judge = ConfigDict()  # the judge's settings (kardia_jax/rewards/judge.py JudgeConfig)
    c.reward.judge.rubric = "v1"  # shipped rubric version, or a path to a rubric file
    c.reward.judge.show_reasoning = False  # judge sees the understanding/reasoning spans too
    c.reward.judge.mode = "expected"  # E[score] over "1".."5" | "generate" (decode and parse)
    c.reward.judge.max_batch = 32  # candidates per compiled judge call
    c.reward.judge.length_buckets = (256, 512, 768, 1024, 1536, 2048, 3072, 4096)
    c.reward.judge.max_candidate_tokens = 512  # longer completions are cut before judging
    # A custom reward instead of the paper's ("module:callable", called as
    # fn(texts, contexts, gold_emotions) -> RewardBatch or {"total": [R], ...}), for
    # verifiable rewards and tests; "" = format + emotion + rubric with the weights below.
    c.reward.fn = ""
    c.reward.format = 1 / 3  # paper: 1/3 format + 1/3 emotion + 1/3 rubric
    c.reward.emotion = 1 / 3
    c.reward.rubric = 1 / 3

    c.grpo = ConfigDict()
    c.grpo.beta = 0.04  # unpublished; TRL's former default (0 = no reference model)
    c.grpo.reference_path = ""  # frozen reference ("" = model.path, the SFT policy)
    c.grpo.clip_low = 0.2  # unpublished; the common PPO epsilon
    c.grpo.clip_high = 0.2
    c.grpo.dual_clip = 0.0  # > 1 enables verl's dual clip for negative advantages
    c.grpo.agg = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum(-norm)
    c.grpo.kl_estimator = "k3"
    c.grpo.advantage_scale = "group"  # group | batch | none (Dr. GRPO)
    c.grpo.advantage_eps = 1e-6
    c.grpo.mu = 1  # update passes over each batch of rollouts
    c.grpo.minibatches = 1  # optimizer steps per pass

    c.train.lr = 1e-6  # paper: 1e-6
    c.train.warmup_steps = 10
    c.train.epochs = 2  # paper: 2 epochs over the hard split (when train.steps == 0)
    c.train.global_batch = 32  # unused by GRPO (rollout.prompts_per_step sets the batch)
    c.checkpoint.every = 20
    c.log.every = 1
    c.log.ledger = True  # append every rollout and its reward breakdown to WORKDIR/rollouts.jsonl
    c.log.text_samples = 2  # completions shown as text in TensorBoard per step
    c.eval.every = 0
    return c
