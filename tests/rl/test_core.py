"""Behaviour of the GRPO math that the goldens do not pin: the on-policy gradient equals
REINFORCE with the group baseline, masked tokens are inert, degenerate groups give zeros,
advantage shapes broadcast, argument errors, and jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.rl import AGG_MODES, aggregate, group_advantages, kl_penalty, policy_loss

B, T, G = 8, 6, 4

# The hand-built cases below use their own tiny shapes: one compiled program each is cheaper
# than compiling every primitive op for every new shape eagerly.
STATIC = ("clip_low", "clip_high", "agg", "dual_clip")
loss_jit = jax.jit(policy_loss, static_argnames=STATIC)
loss_and_grad_jit = jax.jit(jax.value_and_grad(policy_loss, has_aux=True), static_argnames=STATIC)
kl_jit = jax.jit(kl_penalty, static_argnames=("estimator", "k3_bound"))


def batch(seed=0, empty_row=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0], lengths[empty_row] = T, 0
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    logp = (-np.abs(rng.normal(size=(B, T)))).astype(np.float32)
    old_logp = (logp + rng.normal(scale=0.4, size=(B, T))).astype(np.float32)
    rewards = rng.uniform(size=B).astype(np.float32)
    return mask, logp, old_logp, rewards


def reinforce_gradient(adv_bt, mask, agg, norm=None):
    """d/d logp of -sum_{i,t} w_it A_it logp_it, the REINFORCE surrogate with the group
    baseline folded into A, with w_it the weight `agg` gives each token. Loops on purpose."""
    grad = np.zeros_like(mask)
    live = [i for i in range(B) if mask[i].sum() > 0]
    n_tokens = mask.sum()
    for i in live:
        for t in range(T):
            if not mask[i, t]:
                continue
            if agg == "token-mean":
                w = 1.0 / n_tokens
            elif agg == "seq-mean-token-mean":
                w = 1.0 / (mask[i].sum() * len(live))
            elif agg == "seq-mean-token-sum":
                w = 1.0 / len(live)
            else:
                w = 1.0 / ((norm or T) * len(live))
            grad[i, t] = -adv_bt[i, t] * w
    return grad


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize(
    "clip_low,clip_high,dual_clip,token_level",
    [(0.2, 0.2, None, False), (0.2, 0.28, 3.0, False), (0.1, 0.3, 1.5, True)],
)
def test_on_policy_gradient_is_reinforce_with_group_baseline(
    agg, clip_low, clip_high, dual_clip, token_level
):
    """mu = 1: old log-probs are the current ones (no gradient), the ratio is 1, no clip binds,
    so the surrogate's gradient is the policy gradient -A * grad log pi / normaliser."""
    mask, logp, _, rewards = batch()
    adv = np.asarray(group_advantages(rewards, G))
    adv_bt = np.broadcast_to(adv[:, None], (B, T)).copy()
    if token_level:
        adv_bt = adv_bt * np.linspace(0.5, 1.5, T, dtype=np.float32)[None, :]
    adv_in = adv_bt if token_level else adv
    norm = 9 if agg == "seq-mean-token-sum-norm" else None

    def loss_fn(lp):
        # The same array as both arguments: TRL's per_token_logps.detach() when mu = 1.
        loss, _ = policy_loss(lp, lp, adv_in, mask, clip_low, clip_high, agg, dual_clip, norm=norm)
        return loss

    grad = jax.grad(loss_fn)(jnp.asarray(logp))
    np.testing.assert_allclose(
        grad, reinforce_gradient(adv_bt, mask, agg, norm), rtol=1e-6, atol=1e-7
    )


def test_group_advantages_by_hand():
    r = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0], np.float32)
    centered = np.array([-0.5, 0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    group_std = np.repeat([np.std([0, 1, 0, 1], ddof=1), np.std([1, 1, 1, 0], ddof=1)], 4)
    np.testing.assert_allclose(group_advantages(r, 4, eps=0.0), centered / group_std, rtol=1e-6)
    np.testing.assert_allclose(
        group_advantages(r, 4, scale="none"), [-0.5, 0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]
    )
    batch_std = np.std(r, ddof=1)
    np.testing.assert_allclose(
        group_advantages(r, 4, scale="batch", eps=0.0),
        np.array([-0.5, 0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]) / batch_std,
        rtol=1e-6,
    )
    # ddof=0 is the population std: larger advantages by sqrt(G / (G - 1)).
    np.testing.assert_allclose(
        group_advantages(r, 4, ddof=0, eps=0.0),
        group_advantages(r, 4, eps=0.0) * np.sqrt(4 / 3),
        rtol=1e-6,
    )


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.0, 0.1, 2.0 / 3.0, 1.0 / 3.0 + 1e-3, 1e6, -7.25])
def test_zero_variance_groups_give_exact_zeros(scale, value):
    rng = np.random.default_rng(1)
    r = np.concatenate([np.full(G, value), rng.uniform(size=G), np.full(G, 0.3)]).astype(np.float32)
    adv = np.asarray(group_advantages(r, G, scale=scale))
    assert np.all(np.isfinite(adv))
    assert np.all(adv[:G] == 0.0) and np.all(adv[2 * G :] == 0.0)
    assert np.any(adv[G : 2 * G] != 0.0)
    # A whole batch of constant rewards: every advantage is zero, including under "batch".
    assert np.all(
        np.asarray(group_advantages(np.full(2 * G, value, np.float32), G, scale=scale)) == 0.0
    )


@pytest.mark.parametrize("agg", AGG_MODES)
def test_all_masked_rows_are_inert(agg):
    """A fully masked row, even holding NaN/inf, changes neither loss, metrics nor gradient;
    with the default normalisers the loss equals the loss over the other rows alone."""
    mask, logp, old_logp, rewards = batch()
    adv = np.asarray(group_advantages(rewards, G))
    poisoned_logp, poisoned_old, poisoned_adv = logp.copy(), old_logp.copy(), adv.copy()
    poisoned_logp[2], poisoned_old[2], poisoned_adv[2] = np.nan, np.inf, np.nan
    # Masked tail positions of other rows get garbage too.
    poisoned_logp[mask == 0] = -np.inf

    def run(lp, olp, a, m):
        return jax.value_and_grad(lambda x: policy_loss(x, olp, a, m, agg=agg), has_aux=True)(
            jnp.asarray(lp)
        )

    (loss, metrics), grad = run(poisoned_logp, poisoned_old, poisoned_adv, mask)
    keep = np.arange(B) != 2
    (ref_loss, ref_metrics), ref_grad = run(logp[keep], old_logp[keep], adv[keep], mask[keep])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.all(grad[mask == 0] == 0.0)
    np.testing.assert_allclose(grad[keep], ref_grad, rtol=1e-6)
    for name in metrics:
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-6, err_msg=name)

    for est in ("k1", "k2", "k3"):
        kl, kl_grad = jax.value_and_grad(
            lambda x, e=est: aggregate(kl_penalty(x, poisoned_old, mask, e), mask, agg)
        )(jnp.asarray(poisoned_logp))
        assert np.isfinite(kl) and np.all(np.isfinite(kl_grad)), est
        assert np.all(np.asarray(kl_grad)[mask == 0] == 0.0), est


@pytest.mark.parametrize("agg", AGG_MODES)
def test_fully_masked_batch_is_zero_and_finite(agg):
    mask, logp, old_logp, _ = batch()
    (loss, metrics), grad = jax.value_and_grad(
        lambda x: policy_loss(x, old_logp, np.ones(B, np.float32), np.zeros_like(mask), agg=agg),
        has_aux=True,
    )(jnp.asarray(logp))
    assert loss == 0.0 and np.all(grad == 0.0)
    assert metrics["num_tokens"] == 0 and metrics["clip_frac"] == 0.0
    assert metrics["ratio_mean"] == metrics["ratio_min"] == metrics["ratio_max"] == 1.0


@pytest.mark.parametrize("agg", AGG_MODES)
def test_advantages_of_shape_b_and_bt_agree(agg):
    mask, logp, old_logp, rewards = batch()
    adv = group_advantages(rewards, G)
    adv_bt = jnp.broadcast_to(adv[:, None], (B, T))

    def run(a):
        return jax.value_and_grad(
            lambda x: policy_loss(x, old_logp, a, mask, 0.2, 0.28, agg, 2.0), has_aux=True
        )(jnp.asarray(logp))

    (loss_b, metrics_b), grad_b = run(adv)
    (loss_bt, metrics_bt), grad_bt = run(adv_bt)
    np.testing.assert_allclose(loss_b, loss_bt, rtol=1e-7)
    np.testing.assert_allclose(grad_b, grad_bt, rtol=1e-7)
    for name in metrics_b:
        np.testing.assert_allclose(metrics_b[name], metrics_bt[name], rtol=1e-7)


def test_clip_fractions_count_only_masked_in_tokens():
    """Hand-built: 2 rows x 4 tokens, row 0 A = +1, row 1 A = -1, last token of each masked."""
    ratios = np.array([[1.5, 1.0, 0.5, 9.0], [0.5, 1.1, 5.0, 0.01]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.float32)
    adv = np.array([1.0, -1.0], np.float32)
    logp = np.log(ratios)
    _, m = loss_jit(logp, np.zeros_like(logp), adv, mask, dual_clip=3.0)
    # In-mask: high clip on (0,0); low clip on (1,0); dual clip on (1,2). Masked 9.0 / 0.01 ignored.
    assert m["num_tokens"] == 6
    np.testing.assert_allclose(m["clip_frac_high"], 1 / 6)
    np.testing.assert_allclose(m["clip_frac_low"], 1 / 6)
    np.testing.assert_allclose(m["clip_frac"], 2 / 6)
    np.testing.assert_allclose(m["dual_clip_frac"], 1 / 6)
    np.testing.assert_allclose(m["ratio_max"], 5.0, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_min"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_mean"], (1.5 + 1.0 + 0.5 + 0.5 + 1.1 + 5.0) / 6, rtol=1e-6)


def test_dual_clip_bounds_negative_advantage_loss():
    logp = np.log(np.array([[10.0, 10.0]], np.float32))
    old = np.zeros_like(logp)
    mask = np.ones_like(logp)
    neg, _ = loss_jit(logp, old, np.array([-1.0], np.float32), mask, dual_clip=3.0)
    off, _ = loss_jit(logp, old, np.array([-1.0], np.float32), mask)
    pos, _ = loss_jit(logp, old, np.array([1.0], np.float32), mask, dual_clip=3.0)
    np.testing.assert_allclose(neg, 3.0)  # min(10, 3) * |A|
    np.testing.assert_allclose(off, 10.0, rtol=1e-6)
    np.testing.assert_allclose(pos, -1.2)  # positive advantages: the ordinary 1 + eps clip


def test_log_ratio_is_clamped_before_exp():
    logp = np.array([[0.0, -200.0]], np.float32)
    old = np.array([[-200.0, 0.0]], np.float32)
    mask = np.ones_like(logp)
    (loss, m), grad = loss_and_grad_jit(logp, old, np.array([-1.0], np.float32), mask)
    np.testing.assert_allclose(m["ratio_max"], np.exp(20.0), rtol=1e-5)
    np.testing.assert_allclose(m["ratio_min"], np.exp(-20.0), rtol=1e-5)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    kl = kl_jit(logp, old, mask, "k3", k3_bound=None)
    np.testing.assert_allclose(kl[0, 1], np.exp(20.0) - 21.0, rtol=1e-5)


@jax.jit
def _kl_values_and_grads(logp, ref, mask):
    """Every estimator's per-token values, and the gradient of its token mean."""
    out = {}
    for est in ("k1", "k2", "k3"):
        out[est] = kl_penalty(logp, ref, mask, est)
        out[f"grad_{est}"] = jax.grad(
            lambda lp, e=est: aggregate(kl_penalty(lp, ref, mask, e), mask)
        )(logp)
    out["k3_unbounded"] = kl_penalty(logp, ref, mask, "k3", k3_bound=None)
    return out


def test_kl_estimators():
    logp = np.array([[-1.0, -2.0, -0.5, -3.0, -1.0]], np.float32)
    ref = np.array([[-1.0, -1.0, -2.5, 1.0, 3.0]], np.float32)
    mask = np.array([[1, 1, 1, 0, 1]], np.float32)
    x = (ref - logp).astype(np.float64)
    kl = _kl_values_and_grads(logp, ref, mask)
    np.testing.assert_allclose(kl["k1"], -x * mask, atol=1e-6)
    np.testing.assert_allclose(kl["k2"], 0.5 * x**2 * mask, atol=1e-6)
    k3 = (np.exp(x) - x - 1) * mask
    np.testing.assert_allclose(kl["k3_unbounded"], k3, rtol=1e-6, atol=1e-7)
    # The last token is 4 nats likelier under the reference: k3 = 49.6, clamped to 10.
    np.testing.assert_allclose(kl["k3"], np.minimum(k3, 10.0), rtol=1e-6, atol=1e-7)
    # Token-mean gradients over the N = 4 live tokens: k1 1/N, k2 (logp - ref)/N,
    # k3 (1 - exp(ref - logp))/N except past the bound, where the clamp stops it.
    n = mask.sum()
    np.testing.assert_allclose(kl["grad_k1"], mask / n, atol=1e-7)
    np.testing.assert_allclose(kl["grad_k2"], -x * mask / n, rtol=1e-6, atol=1e-7)
    expected_k3 = np.where(k3 < 10.0, (1 - np.exp(x)) * mask / n, 0.0)
    np.testing.assert_allclose(kl["grad_k3"], expected_k3, rtol=1e-6, atol=1e-7)
    # Identical policies: every estimator is 0, and so are the k2 and k3 gradients.
    same = _kl_values_and_grads(logp, logp, mask)
    for est in ("k1", "k2", "k3"):
        np.testing.assert_allclose(same[est], 0.0, atol=1e-7)
    np.testing.assert_allclose(same["grad_k2"], 0.0, atol=1e-7)
    np.testing.assert_allclose(same["grad_k3"], 0.0, atol=1e-7)


def test_aggregate_normalisers():
    def close(actual, expected):
        np.testing.assert_allclose(actual, expected, rtol=1e-6)

    values = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    close(aggregate(values, mask, "token-mean"), (1 + 2 + 9 + 10 + 11 + 12) / 6)
    close(aggregate(values, mask, "token-mean", num_tokens=10.0), 4.5)
    close(aggregate(values, mask, "seq-mean-token-mean"), (1.5 + 10.5) / 2)
    close(aggregate(values, mask, "seq-mean-token-mean", num_seqs=3), 4.0)
    close(aggregate(values, mask, "seq-mean-token-sum"), (3 + 42) / 2)
    close(aggregate(values, mask, "seq-mean-token-sum-norm"), (3 + 42) / 2 / 4)
    close(aggregate(values, mask, "seq-mean-token-sum-norm", num_seqs=3, norm=15), 45 / 3 / 15)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: group_advantages(np.zeros(8), 1), "group_size must be at least 2"),
        (lambda: group_advantages(np.zeros(7), 4), "multiple of group_size=4"),
        (lambda: group_advantages(np.zeros((2, 4)), 4), "must be 1-D"),
        (lambda: group_advantages(np.zeros(8), 4, scale="std"), "scale must be one of"),
        (lambda: aggregate(np.zeros((2, 2)), np.ones((2, 2)), "mean"), "agg must be one of"),
        (
            lambda: policy_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3), np.ones((2, 3))),
            r"advantages must have shape \(2,\)",
        ),
        (
            lambda: policy_loss(
                np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), np.ones((2, 3)), dual_clip=1.0
            ),
            "dual_clip must exceed 1",
        ),
        (
            lambda: kl_penalty(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 3)), "k4"),
            "estimator must be one of",
        ),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_jit_matches_eager_without_recompiling():
    mask, logp, old_logp, rewards = batch()
    adv = jax.jit(group_advantages, static_argnums=(1,), static_argnames=("scale",))(rewards, G)
    kwargs = dict(clip_low=0.2, clip_high=0.28, agg="seq-mean-token-mean", dual_clip=3.0)
    loss, metrics = loss_jit(logp, old_logp, adv, mask, **kwargs)
    eager_loss, eager_metrics = policy_loss(logp, old_logp, adv, mask, **kwargs)
    np.testing.assert_allclose(loss, eager_loss, rtol=1e-6)
    for name in metrics:
        np.testing.assert_allclose(metrics[name], eager_metrics[name], rtol=1e-6)
    # New values (and a different mask) of the same shapes reuse the compiled program.
    compiled = loss_jit._cache_size()
    loss_jit(logp * 0.5, old_logp, adv * 2, np.roll(mask, 1, axis=0), **kwargs)
    assert loss_jit._cache_size() == compiled
