"""Sampling methods as small composable pieces on f32 logits [B, V]: temperature,
top-k, top-p, min-p, greedy, and the policy log-probs GRPO's ratio needs.

Order and tie rules follow transformers' logits processors (temperature first,
then top-k, top-p, min-p; ties at a cut-off are kept), so a `SamplingConfig`
means what the same numbers mean in `transformers.generate`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from kardia_jax.errors import ConfigError

_NEG_INF = -jnp.inf  # filtered-out logits: probability exactly 0 under softmax / categorical


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token. Hashable: it is a static argument of the compiled
    loop, so each distinct config compiles once (a GRPO run uses one)."""

    temperature: float = 0.0  # 0 -> greedy (argmax); log-probs are then reported at T = 1
    top_k: int = 0  # keep the k most likely tokens; 0 -> off
    top_p: float = 1.0  # keep the smallest top set with probability >= top_p; 1 -> off
    min_p: float = 0.0  # keep tokens with p >= min_p * p_max; 0 -> off

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature={self.temperature!r}: must be >= 0")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k!r}: must be >= 0 (0 is off)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r}: must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p={self.min_p!r}: must be in [0, 1)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def logprob_temperature(self) -> float:
        return 1.0 if self.greedy else self.temperature


def apply_temperature(logits_BV, temperature: float):
    return logits_BV if temperature in (0.0, 1.0) else logits_BV / jnp.float32(temperature)


def apply_top_k(logits_BV, k: int):
    """Masks all but the k largest logits (every logit tied with the k-th is kept)."""
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    kth = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV < kth, _NEG_INF, logits_BV)


def apply_top_p(logits_BV, p: float, top_k: int = 0):
    """Nucleus filter: keeps token i iff the probability of the tokens ranked above it
    is < p (the smallest top set reaching p; the top token always stays).

    With an active `top_k` only the k survivors can be kept, so sorting those k
    (`lax.top_k`) replaces a full sort over the vocabulary.
    """
    if p >= 1.0:
        return logits_BV
    v = logits_BV.shape[-1]
    if 0 < top_k < v:
        sorted_BV = jax.lax.top_k(logits_BV, top_k)[0]
    else:
        sorted_BV = jnp.flip(jnp.sort(logits_BV, axis=-1), axis=-1)
    probs = jax.nn.softmax(sorted_BV, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_above < jnp.float32(p)
    cutoff = jnp.min(jnp.where(keep, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < cutoff, _NEG_INF, logits_BV)


def apply_min_p(logits_BV, min_p: float):
    """Keeps tokens with p >= min_p * p_max, i.e. logit >= max logit + log(min_p)."""
    if min_p <= 0.0:
        return logits_BV
    cutoff = jnp.max(logits_BV, axis=-1, keepdims=True) + jnp.float32(math.log(min_p))
    return jnp.where(logits_BV < cutoff, _NEG_INF, logits_BV)


def filtered_logits(logits_BV, cfg: SamplingConfig):
    """The logits the draw is made from: tempered, then top-k, top-p, min-p."""
    x = apply_temperature(logits_BV.astype(jnp.float32), cfg.logprob_temperature)
    x = apply_top_k(x, cfg.top_k)
    x = apply_top_p(x, cfg.top_p, cfg.top_k)
    return apply_min_p(x, cfg.min_p)


def token_logprobs(logits_BV, tokens_B, temperature: float):
    """log softmax(logits / T)[token] in f32: the policy's log-prob at temperature T,
    before any truncation, which is what GRPO's importance ratio compares."""
    logp = jax.nn.log_softmax(apply_temperature(logits_BV.astype(jnp.float32), temperature))
    return jnp.take_along_axis(logp, tokens_B[:, None], axis=-1)[:, 0]


def argmax(x_BV):
    """First index of the maximum, [B] int32: what `jnp.argmax` returns, as two plain
    reductions (XLA:CPU's fused (value, index) reduction is far slower over a vocab)."""
    v = x_BV.shape[-1]
    is_max = x_BV == jnp.max(x_BV, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(is_max, jnp.arange(v, dtype=jnp.int32)[None, :], v), axis=-1)
    return jnp.minimum(first, v - 1)  # NaN rows: stay in range


def gumbel_noise(key, shape):
    """Gumbel noise of `shape` [B, V]: from one key, or from [B] typed keys, row b from
    key b alone (so a row's draw does not depend on the other rows of its batch)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1:
        return jax.vmap(lambda k: jax.random.gumbel(k, shape[1:], jnp.float32))(key)
    return jax.random.gumbel(key, shape, jnp.float32)


def sample(logits_BV, key, cfg: SamplingConfig):
    """Next tokens [B] (int32) and their log-probs [B] (f32, at the config's T). `key`
    is one key for the whole draw or [B] keys, one per row (`gumbel_noise`)."""
    logits_BV = logits_BV.astype(jnp.float32)
    if cfg.greedy:
        # Filters never remove the argmax, so greedy ignores them.
        tokens = argmax(logits_BV)
    else:
        # Gumbel-max, as `jax.random.categorical` draws, with the faster argmax.
        gumbel = gumbel_noise(key, logits_BV.shape)
        tokens = argmax(filtered_logits(logits_BV, cfg) + gumbel)
    return tokens, token_logprobs(logits_BV, tokens, cfg.logprob_temperature)
