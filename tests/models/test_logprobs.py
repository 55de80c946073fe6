"""The SFT loss's fused log-prob sum: the same value and gradients as autodiff of
the plain chunked log-probs, tied and untied heads, with padding chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kardia_jax.models import init_model
from kardia_jax.models.logprobs import token_log_probs, weighted_log_prob_sum

from .test_decoder import TINY


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_sum_equals_autodiff_of_chunked_log_probs(tied, dtype):
    cfg = TINY.replace(tie_word_embeddings=tied, dtype=dtype)
    graphdef, params = nnx.split(init_model(cfg, seed=3))
    rng = np.random.default_rng(0)
    b, k = 3, 7  # chunk 2: 4 chunks of 6 rows, the last padded with 3 rows
    hidden = jnp.asarray(rng.standard_normal((b, k, cfg.hidden_size)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, k)), jnp.int32)
    weight = jnp.asarray(rng.integers(0, 2, (b, k)), jnp.int32)

    def fused(params, hidden):
        model = nnx.merge(graphdef, params)
        return weighted_log_prob_sum(model, hidden, targets, weight, chunk=2)

    def plain(params, hidden):
        model = nnx.merge(graphdef, params)
        return jnp.sum(token_log_probs(model, hidden, targets, chunk=2) * weight)

    (v1, (gp1, gh1)) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(params, hidden)
    (v2, (gp2, gh2)) = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(params, hidden)
    assert float(jax.jit(fused)(params, hidden)) == pytest.approx(float(v2), rel=1e-5)
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(gh1, gh2, rtol=tol, atol=tol * float(jnp.max(jnp.abs(gh2))))
    head = "embed_tokens" if tied else "lm_head"
    flat1, flat2 = nnx.to_flat_state(gp1), nnx.to_flat_state(gp2)
    compared = 0
    for (path, a), (_, b_) in zip(flat1, flat2, strict=True):
        a, b_ = np.asarray(a[...]), np.asarray(b_[...])
        scale = float(np.max(np.abs(b_))) or 1.0
        np.testing.assert_allclose(a, b_, rtol=tol, atol=tol * scale, err_msg=str(path))
        compared += head in str(path)
    assert compared >= 1
    assert float(jnp.max(jnp.abs(gh2))) > 0  # gradients that could differ
