"""GRPO math as small pure functions: group advantages, the clipped policy loss, KL estimators
and the loss aggregation they share. The step and driver live elsewhere in kardia_jax.rl.

Everything is float32 and jit-friendly: string options (`scale`, `agg`, `estimator`) and clip
bounds are Python values the caller marks static; array values never steer Python control
flow. Arrays are [B, T] = [completions, completion tokens]; `mask` is 1 (or True) on the
completion tokens that train and 0 elsewhere (prompt, padding, tool output).

Where the references disagree (TRL 1.16 GRPOTrainer, verl 0.9 core_algos, tunix algo_core),
we say so beside the argument that chooses, and tests/rl/goldens/ pins both TRL and verl.
"""

import jax
import jax.numpy as jnp

# The log-ratio log(pi / pi_old) and log(pi_ref / pi) are clamped to +-20 before exp, as verl
# and tunix do (TRL does not clamp): exp(20) ~ 4.9e8 stays finite in float32, and a token this
# far off-policy is clipped out of the surrogate anyway.
LOG_RATIO_BOUND = 20.0

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")


def group_advantages(
    rewards, group_size: int, scale: str = "group", eps: float = 1e-6, ddof: int = 1
):
    """Group-relative advantages A_i = (r_i - mean_g) / (std + eps), one per completion.

    Args:
      rewards: [num_prompts * group_size] rewards, each prompt's `group_size` completions
        consecutive (the layout both TRL and verl's uid grouping produce).
      group_size: G, at least 2 (a group of one has no baseline: verl then uses mean 0 and
        std 1, i.e. the raw reward; TRL gives 0; we refuse).
      scale: "group" divides by the std of the group (GRPO; TRL's and verl's default);
        "batch" by the std of all rewards in the batch, while still subtracting the group mean
        (TRL's scale_rewards="batch", after PPO-Lite); "none" only subtracts the group mean
        (Dr. GRPO; TRL scale_rewards="none", verl norm_adv_by_std_in_grpo=False).
      eps: added to the std, outside the square root. verl and tunix use 1e-6, TRL hard-codes
        1e-4; it matters only for nearly-constant groups (std ~ eps).
      ddof: 1 is the unbiased sample std (torch.std / TRL nanstd / verl / tunix); 0 the
        population std (jnp.std's default), which inflates advantages by sqrt(G / (G - 1)).

    Returns:
      [num_prompts * group_size] float32 advantages. Groups whose rewards are all equal
      (zero variance, no learning signal) get exactly 0: float rounding in the mean could
      otherwise leave ~1 ulp that, divided by std + eps ~ eps, becomes a spurious +-0.01.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {rewards.shape}"
        )
    grouped = rewards.reshape(-1, group_size)
    centered = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    constant = jnp.max(grouped, axis=1, keepdims=True) == jnp.min(grouped, axis=1, keepdims=True)
    centered = jnp.where(constant, 0.0, centered)
    if scale == "group":
        centered = centered / (jnp.std(grouped, axis=1, ddof=ddof, keepdims=True) + eps)
    elif scale == "batch":
        batch_std = jnp.std(grouped, ddof=ddof, keepdims=True)  # over all rewards, [1, 1]
        centered = centered / (batch_std + eps)
    return centered.reshape(-1)


def aggregate(values, mask, agg: str = "token-mean", *, num_seqs=None, num_tokens=None, norm=None):
    """Reduces per-token values [B, T] to a scalar over the tokens where `mask` is set.

    Modes (names as in verl; TRL's loss_type in brackets):
      token-mean: sum / num_tokens. [bnpo; dapo, whose count spans the whole generation batch:
        pass that as `num_tokens`]
      seq-mean-token-mean: each completion's token mean, then the mean over completions.
        [grpo, with num_seqs=B]
      seq-mean-token-sum: each completion's token sum, mean over completions.
        [luspo's aggregation, with num_seqs=B]
      seq-mean-token-sum-norm: seq-mean-token-sum / norm, with norm a constant length.
        [dr_grpo, with num_seqs=B and norm=max_completion_length]

    Normalisers (scalars, Python numbers or arrays, so a step can pass global counts):
      num_tokens: default the number of masked-in tokens here (at least 1).
      num_seqs: default the number of completions with at least one masked-in token (at least
        1): verl's default, so a fully masked row (a dropped or truncated completion) neither
        contributes nor dilutes. TRL's grpo / dr_grpo / luspo divide by all B rows instead;
        pass num_seqs=B for that.
      norm: default T = values.shape[-1], verl's default loss_scale_factor (the padded response
        length). Dr. GRPO's point is a constant that does not follow the batch: pass the
        configured max completion length (TRL's max_completion_length) so that bucketed or
        shorter padded batches scale the same.

    Masked positions contribute nothing, even if they hold inf or NaN.
    """
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    on = jnp.asarray(mask).astype(bool)
    values = jnp.where(on, jnp.asarray(values, jnp.float32), 0.0)
    tokens_per_seq = jnp.sum(on, axis=-1, dtype=jnp.float32)  # [B]
    sums = jnp.sum(values, axis=-1)  # [B]
    if agg == "token-mean":
        if num_tokens is None:
            num_tokens = jnp.maximum(jnp.sum(tokens_per_seq), 1.0)
        return jnp.sum(sums) / num_tokens
    if num_seqs is None:
        num_seqs = jnp.maximum(jnp.sum(tokens_per_seq > 0, dtype=jnp.float32), 1.0)
    if agg == "seq-mean-token-mean":
        # Empty rows have sum 0, so clamping their count to 1 keeps them at 0 (no 0/0).
        sums = sums / jnp.maximum(tokens_per_seq, 1.0)
    elif agg == "seq-mean-token-sum-norm":
        sums = sums / (values.shape[-1] if norm is None else norm)
    return jnp.sum(sums) / num_seqs


def _per_token_advantages(advantages, shape):
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.shape == shape[:1]:
        # [B] -> [B, T] explicitly (tests run with rank promotion raising).
        return jnp.broadcast_to(adv[:, None], shape)
    if adv.shape == shape:
        return adv
    raise ValueError(f"advantages must have shape {shape[:1]} or {shape}, got {adv.shape}")


def policy_loss(
    logp,
    old_logp,
    advantages,
    mask,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    dual_clip: float | None = None,
    *,
    num_seqs=None,
    num_tokens=None,
    norm=None,
    log_ratio_bound: float = LOG_RATIO_BOUND,
):
    """PPO/GRPO clipped surrogate, aggregated over masked-in tokens; differentiable in `logp`.

    Per token, with ratio = exp(clamp(logp - old_logp, +-log_ratio_bound)):
      loss_t = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))
    which is TRL's -min(ratio A, clip(ratio) A) and verl's compute_policy_loss_vanilla.
    With `dual_clip` = c > 1 (verl's clip_ratio_c, tunix's epsilon_c; TRL has none), tokens
    with A < 0 are also bounded by -A c: loss_t = min(loss_t, -A c), so a huge ratio on a bad
    token cannot blow the loss up. verl applies it always with c = 3 by default; we default to
    off, like TRL and tunix. clip_high > clip_low is DAPO's clip-higher (0.28 / 0.2).

    Args:
      logp, old_logp: [B, T] token log-probs under the policy being trained and the policy
        that sampled (or the one before this update pass: with mu = 1 they are equal and the
        ratio is 1 in value). `old_logp` gets no gradient.
      advantages: [B] (one per completion, broadcast over its tokens) or [B, T].
      mask: [B, T], nonzero where a token trains.
      agg, num_seqs, num_tokens, norm: how to average tokens; see `aggregate`.
      log_ratio_bound: clamp on logp - old_logp before exp (verl and tunix use 20; TRL none).

    Returns:
      (loss, metrics). Metrics are token means over masked-in tokens, whatever `agg` is:
        clip_frac_low: A < 0 and ratio < 1 - clip_low (TRL clip_ratio/low_mean).
        clip_frac_high: A > 0 and ratio > 1 + clip_high (TRL clip_ratio/high_mean).
        clip_frac: either, i.e. where the clipped branch is the one in force (TRL
          clip_ratio/region_mean, verl pg_clipfrac).
        dual_clip_frac: where the dual clip is in force (verl pg_clipfrac_lower); 0 if off.
        ratio_mean, ratio_min, ratio_max: the importance ratio (1 when there are no tokens).
        ppo_kl: mean of old_logp - logp, the k1 estimate of KL(old || new) (verl ppo_kl).
        num_tokens: masked-in tokens in this batch.
    """
    on = jnp.asarray(mask).astype(bool)
    shape = on.shape
    # Zero masked positions before any arithmetic: where() hides NaN/inf in the value but not
    # in the gradient (0 * inf = NaN), so garbage log-probs on padding must never reach exp.
    logp = jnp.where(on, jnp.asarray(logp, jnp.float32), 0.0)
    old_logp = jnp.where(on, jax.lax.stop_gradient(jnp.asarray(old_logp, jnp.float32)), 0.0)
    adv = jnp.where(on, _per_token_advantages(advantages, shape), 0.0)

    log_ratio = jnp.clip(logp - old_logp, -log_ratio_bound, log_ratio_bound)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must exceed 1, got {dual_clip}")
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (per_token > bound)
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, bound), per_token)
    else:
        dual_active = jnp.zeros(shape, bool)
    loss = aggregate(per_token, on, agg, num_seqs=num_seqs, num_tokens=num_tokens, norm=norm)

    n = jnp.sum(on, dtype=jnp.float32)
    denom = jnp.maximum(n, 1.0)

    def frac(hit):
        return jnp.sum(hit & on, dtype=jnp.float32) / denom

    low = (adv < 0) & (ratio < 1.0 - clip_low)
    high = (adv > 0) & (ratio > 1.0 + clip_high)
    any_token = n > 0
    metrics = {
        "clip_frac_low": frac(low),
        "clip_frac_high": frac(high),
        "clip_frac": frac(low | high),
        "dual_clip_frac": frac(dual_active),
        "ratio_mean": jnp.where(any_token, jnp.sum(jnp.where(on, ratio, 0.0)) / denom, 1.0),
        "ratio_min": jnp.where(any_token, jnp.min(jnp.where(on, ratio, jnp.inf)), 1.0),
        "ratio_max": jnp.where(any_token, jnp.max(jnp.where(on, ratio, -jnp.inf)), 1.0),
        "ppo_kl": jnp.sum(jnp.where(on, -log_ratio, 0.0)) / denom,
        "num_tokens": n,
    }
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss, metrics


def kl_penalty(
    logp,
    ref_logp,
    mask,
    estimator: str = "k3",
    *,
    k3_bound: float | None = 10.0,
    log_ratio_bound: float = LOG_RATIO_BOUND,
):
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi, [B, T], 0 where masked.

    With x = ref_logp - logp = log(pi_ref / pi) (Schulman, "Approximating KL divergence"):
      k1 = -x = logp - ref_logp        unbiased, high variance, can be negative.
                                       verl "kl" / "k1", tunix "kl".
      k2 = x^2 / 2                     biased, low variance, its gradient is the KL's.
                                       verl "mse" / "k2", tunix "mse_kl".
      k3 = exp(x) - x - 1 >= 0         unbiased, low variance. TRL's per_token_kl (always k3,
                                       unclamped), verl "low_var_kl" / "k3", tunix "low_var_kl".
    For k3, x is clamped to +-log_ratio_bound (verl: 20) before exp, and the result to
    [0, k3_bound] (verl: 10; TRL and tunix by default: none, pass None). The bound caps one
    far-off token's pull (d k3 / d logp = 1 - exp(x) reaches -4.9e8 at x = 20) at the price of
    no gradient on tokens beyond it.

    Aggregate with `aggregate(kl, mask, agg)` using the policy loss's `agg`, as verl's actor
    and TRL (which adds beta * k3 per token before aggregating) both do.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    on = jnp.asarray(mask).astype(bool)
    # As in policy_loss: masked garbage must not reach exp or the gradient.
    logp = jnp.where(on, jnp.asarray(logp, jnp.float32), 0.0)
    ref_logp = jnp.where(on, jnp.asarray(ref_logp, jnp.float32), 0.0)
    x = ref_logp - logp
    if estimator == "k1":
        kl = -x
    elif estimator == "k2":
        kl = 0.5 * jnp.square(x)
    else:
        x = jnp.clip(x, -log_ratio_bound, log_ratio_bound)
        # expm1 keeps k3's small values accurate (exp(x) - 1 - x cancels near x = 0).
        kl = jnp.expm1(x) - x
        if k3_bound is not None:
            kl = jnp.minimum(kl, k3_bound)
    return jnp.where(on, kl, 0.0)
