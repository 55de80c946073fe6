"""The decoder's projections in the form XLA:CPU runs fastest, with a hand-written
backward pass; `layers.Dense` uses it when the backend is the CPU.

Why: XLA:CPU hands a dot to its fast kernels (YNNPACK) only in the
canonical form [M, K] x [K, N] with row-major operands, and a bf16 dot only with an
f32 result; any other dot falls back to a generic kernel 2-4x slower, or is computed
in f32. Autodiff of a plain tensordot gives the weight gradient as x^T g with both
operands transposed, which XLA:CPU runs as that slow dot after transposing the
larger operand (timings: docs/benchmarks.md, "Canonical matmul forms on CPU").
TPUs and GPUs take any dot layout, so other backends keep the plain
`jnp.tensordot`, which autodiff differentiates.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _as_2d(x, w, n_in):
    k = math.prod(w.shape[:n_in])
    return x.reshape(-1, k), w.reshape(k, -1)


def matmul(x, w, n_in, dtype, out_dtype):
    """x . w contracting x's last `n_in` dims with w's first, as one 2-D dot in
    `dtype` with an f32 result cast to `out_dtype`; every dot of its backward pass is
    canonical too."""
    return _matmul_2d(x, w, n_in, dtype, out_dtype, jnp.dtype(x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _matmul_2d(x, w, n_in, dtype, out_dtype, x_dtype):
    del x_dtype
    x2, w2 = _as_2d(x, w, n_in)
    y = jnp.dot(x2.astype(dtype), w2.astype(dtype), preferred_element_type=jnp.float32)
    return y.astype(out_dtype).reshape(x.shape[: x.ndim - n_in] + w.shape[n_in:])


def _matmul_2d_fwd(x, w, n_in, dtype, out_dtype, x_dtype):
    # Saves the input in the compute dtype, as autodiff of the plain form would.
    return _matmul_2d(x, w, n_in, dtype, out_dtype, x_dtype), (x.astype(dtype), w)


def _matmul_2d_bwd(n_in, dtype, out_dtype, x_dtype, res, g):
    del out_dtype
    x, w = res
    x2, w2 = _as_2d(x, w, n_in)
    w2 = w2.astype(dtype)
    g2 = g.reshape(x2.shape[0], w2.shape[1]).astype(dtype)
    # dx = g W^T: XLA:CPU runs the f32 form (W contracted on its minor dim) on its
    # fast kernels, but upcasts the bf16 one to f32; a materialised W^T keeps it bf16.
    w_t = w2.T if jnp.dtype(dtype) == jnp.float32 else transposed(w2)
    dx = jnp.dot(g2, w_t, preferred_element_type=jnp.float32)
    m, k, n = x2.shape[0], x2.shape[1], w2.shape[1]
    # dW = x^T g: materialise whichever transpose moves fewer bytes.
    if m * k <= m * n + k * n:
        dw = jnp.dot(transposed(x2), g2, preferred_element_type=jnp.float32)
    else:
        dw = transposed(jnp.dot(transposed(g2), x2, preferred_element_type=jnp.float32))
    return dx.astype(x_dtype).reshape(x.shape), dw.astype(w.dtype).reshape(w.shape)


def transposed(a_MN):
    """a.T as a real [N, M] array. A plain transpose is folded back into the dot that
    consumes it (making the dot non-canonical again); through a unit third dim XLA
    keeps it. (An optimization_barrier also keeps it, but XLA:CPU then computes a
    bf16 dot in f32 at half the speed.)"""
    m, n = a_MN.shape
    return jnp.transpose(a_MN[:, :, None], (1, 0, 2)).reshape(n, m)


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)
