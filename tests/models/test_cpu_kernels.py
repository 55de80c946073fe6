"""The CPU forms of the decoder's hot spots against the plain forms they replace:
projections as 2-D dots with a hand-written backward (every weight-gradient branch),
and attention in causal query blocks (several blocks, a partial last one, left
padding and packed segments)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kardia_jax.models import cpu_matmul
from kardia_jax.models.layers import _attention_block, attention_mask, dot_product_attention


@pytest.mark.parametrize(
    "x_shape, w_shape, n_in",
    [
        ((3, 5, 8), (8, 48), 1),  # m*k small: x^T is materialised
        ((3, 5, 48), (48, 4), 1),  # m*k large: g^T and the result's transpose
        ((2, 5, 4, 6), (4, 6, 10), 2),  # o_proj-like: two contracted dims
        ((2, 5, 8), (8, 3, 4), 1),  # q_proj-like: [D, N, H] kernel
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_matmul_value_and_gradients_equal_tensordot(x_shape, w_shape, n_in, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    cot = jnp.asarray(rng.standard_normal(x_shape[: len(x_shape) - n_in] + w_shape[n_in:]))
    dt = jnp.dtype(dtype)

    def ours(x, w):
        return jnp.sum(cpu_matmul.matmul(x, w, n_in, dt, jnp.dtype(jnp.float32)) * cot)

    def plain(x, w):
        y = jnp.tensordot(x.astype(dt), w.astype(dt), axes=n_in, preferred_element_type=jnp.float32)
        return jnp.sum(y * cot)

    v1, (dx1, dw1) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, w)
    v2, (dx2, dw2) = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, w)
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert dx1.shape == x.shape and dw1.shape == w.shape
    np.testing.assert_allclose(v1, v2, rtol=tol)
    for a, b in ((dx1, dx2), (dw1, dw2)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("packed", [False, True])
def test_blocked_causal_attention_equals_one_block(packed):
    b, t, n, k, h = 2, 200, 4, 2, 16  # blocks of 64: 64, 64, 64 and a partial 8
    rng = np.random.default_rng(1)
    q, kk, v = (jnp.asarray(rng.standard_normal((b, t, m, h)), jnp.float32) for m in (n, k, k))
    real = np.ones((b, t), np.int32)
    real[0, :37] = 0  # left padding: fully masked rows in the first block
    segments = jnp.asarray(np.repeat(np.arange(4), t // 4)[None].repeat(b, 0))
    mask = attention_mask(jnp.asarray(real), t, segment_ids=segments if packed else None)
    # Rows of padding see no key: both forms give them a finite filler (an average
    # over different key ranges), which no loss reads; compare and weight real rows.
    w = jnp.asarray(rng.standard_normal((b, t, n, h)) * real[:, :, None, None], jnp.float32)
    rows = real.astype(bool)

    def blocked(q, kk, v):
        return dot_product_attention(q, kk, v, mask, jnp.float32)

    def whole(q, kk, v):
        return _attention_block(q, kk, v, mask, jnp.float32)

    out_blocked, out_whole = jax.jit(blocked)(q, kk, v), jax.jit(whole)(q, kk, v)
    assert np.isfinite(np.asarray(out_blocked)).all()
    np.testing.assert_allclose(out_blocked[rows], out_whole[rows], rtol=1e-5, atol=1e-6)
    # and the gradients through the slices and the concatenation
    g1 = jax.jit(jax.grad(lambda *a: jnp.sum(blocked(*a) * w), argnums=(0, 1, 2)))(q, kk, v)
    g2 = jax.jit(jax.grad(lambda *a: jnp.sum(whole(*a) * w), argnums=(0, 1, 2)))(q, kk, v)
    for a, c in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
