"""Sampling methods are right in distribution: 10,000 draws from a fixed toy logit
table against the target distribution of each method (chi-square at a fixed seed),
and the same draws against a plausible wrong filter, which the test must reject."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.sampling import SamplingConfig, sample

DRAWS = 10_000
ALPHA = 1e-3  # the level at which the right target must pass and a wrong one must fail
PROBS = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02])
LOGITS = np.log(PROBS).astype(np.float32) + 1.5  # an offset: softmax must not care


def reference(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, logits=LOGITS):
    """Target probabilities, written the way transformers' logits processors define
    them (ascending sort, remove cumulative mass <= 1 - top_p), in float64 numpy."""
    x = logits.astype(np.float64) / temperature
    if top_k:
        x = np.where(x < np.sort(x)[-top_k], -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(x)
        p = np.exp(x[order] - x.max())
        cum = np.cumsum(p / p.sum())
        remove = cum <= 1 - top_p
        remove[-1] = False
        x[order[remove]] = -np.inf
    if min_p:
        p = np.exp(x - x.max())
        x = np.where(p < min_p, -np.inf, x)
    p = np.exp(x - x.max())
    return p / p.sum()


@functools.partial(jax.jit, static_argnums=(1,))
def draw(key, cfg):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (DRAWS, LOGITS.size))
    tokens, logprobs = sample(logits, key, cfg)
    return tokens, logprobs


def chi_square_p(counts, target):
    """p-value of Pearson's chi-square on the target's support (tokens outside it
    must never be drawn: checked separately)."""
    support = target > 0
    expected = DRAWS * target[support]
    stat = float(np.sum((counts[support] - expected) ** 2 / expected))
    df = int(support.sum()) - 1
    return float(jax.scipy.special.gammaincc(df / 2, stat / 2))


# config -> (right target, a plausible bug's target)
CASES = {
    "temperature": (
        dict(temperature=0.6),
        reference(temperature=0.6),
        reference(temperature=1 / 0.6),  # multiplying by T instead of dividing
    ),
    # Off by one.
    "top_k": (dict(temperature=1.0, top_k=3), reference(top_k=3), reference(top_k=4)),
    "top_p": (
        dict(temperature=1.0, top_p=0.6),
        reference(top_p=0.6),  # keeps .3 .2 .15 (mass above the 4th is .65)
        reference(top_k=2),  # inclusive cumsum: drops the token that crosses top_p
    ),
    "min_p": (
        dict(temperature=0.5, min_p=0.1),
        reference(temperature=0.5, min_p=0.1),  # p >= 0.1 * p_max after tempering: 5 tokens
        # The threshold taken on the untempered probabilities: 7 tokens.
        np.where(reference(min_p=0.1) > 0, PROBS**2, 0.0),
    ),
    "composed": (
        dict(temperature=1.5, top_k=6, top_p=0.8, min_p=0.2),
        reference(temperature=1.5, top_k=6, top_p=0.8, min_p=0.2),
        # Temperature applied after the filters instead of before (as in some
        # implementations): the support is chosen from the untempered logits.
        np.where(reference(top_k=6, top_p=0.8, min_p=0.2) > 0, PROBS ** (1 / 1.5), 0.0),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_match_target_distribution(name):
    kwargs, target, wrong = CASES[name]
    wrong = wrong / wrong.sum()
    assert not np.allclose(target, wrong, atol=0.01), "the bug must change the target"
    tokens, logprobs = draw(jax.random.key(1234), SamplingConfig(**kwargs))
    counts = np.bincount(np.asarray(tokens), minlength=LOGITS.size)
    assert counts[target == 0].sum() == 0, f"{name}: drew filtered tokens {counts}"
    p_right, p_wrong = chi_square_p(counts, target), chi_square_p(counts, wrong)
    print(f"{name}: p(right) = {p_right:.3g}, p(wrong) = {p_wrong:.3g}")
    assert p_right > ALPHA, f"{name}: p={p_right:.3g} against the right target"
    assert p_wrong < ALPHA, f"{name}: p={p_wrong:.3g} against a wrong target"
    # Log-probs are those of the tempered, *unfiltered* distribution.
    t = kwargs["temperature"]
    untruncated = jax.nn.log_softmax(jnp.asarray(LOGITS) / t)
    np.testing.assert_allclose(np.asarray(logprobs), untruncated[np.asarray(tokens)], atol=1e-6)


def test_greedy_is_argmax_and_ignores_filters():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(64, 50)).astype(np.float32))
    for cfg in (SamplingConfig(), SamplingConfig(top_k=1, top_p=0.1, min_p=0.5)):
        tokens, logprobs = jax.jit(sample, static_argnums=2)(logits, jax.random.key(0), cfg)
        np.testing.assert_array_equal(np.asarray(tokens), np.argmax(np.asarray(logits), -1))
        np.testing.assert_allclose(
            np.asarray(logprobs), np.max(jax.nn.log_softmax(logits), -1), atol=1e-6
        )


def test_top_p_keeps_ties_and_top_token():
    logits = jnp.asarray([[2.0, 2.0, 0.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    # Row 0: both tied leaders survive even though one alone exceeds p; row 1: the
    # top token alone holds > p and is never removed.
    from kardia_jax.sampling.methods import apply_top_p

    kept = np.isfinite(np.asarray(apply_top_p(logits, 0.3)))
    np.testing.assert_array_equal(kept, [[True, True, False, False], [True, False, False, False]])
