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
    c.rollout.old_logp = "recompute"  # "recompute" (a forward before the update) | "sampler"
    c.rollout.dynamic_sampling = True  # refill zero-variance groups with fresh prompts
    c.rollout.max_refill_rounds = 2  # extra prompt batches drawn per step at most

    c.reward = ConfigDict()
    c.reward.judge_path = ""  # judge checkpoint dir ("" = no judge: rubric weight must be 0)
    c.reward.judge_dtype = "bfloat16"
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
