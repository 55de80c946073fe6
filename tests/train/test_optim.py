"""The optimizer's new-token row scaling: only the added rows move faster."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from kardia_jax.models import ModelConfig
from kardia_jax.models.decoder import init_model
from kardia_jax.train.config import sft_config
from kardia_jax.train.optim import make_optimizer

V, FIRST_NEW = 40, 32


def tiny(tied: bool):
    cfg = ModelConfig(
        family="llama",
        vocab_size=V,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        tie_word_embeddings=tied,
    )
    return nnx.state(init_model(cfg), nnx.Param)


def one_update(params, scale: float):
    tcfg = ConfigDict(sft_config().train.to_dict())
    tcfg.new_token_lr_scale, tcfg.warmup_steps, tcfg.clip_norm = scale, 0, 0.0
    tx = make_optimizer(tcfg, 10, first_new_row=FIRST_NEW)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


@pytest.mark.parametrize("tied", [True, False])
def test_only_the_added_vocabulary_rows_get_scaled_updates(tied):
    params = tiny(tied)
    plain, fast = one_update(params, 1.0), one_update(params, 25.0)
    ratio = jax.tree.map(lambda a, b: np.asarray(b) / np.asarray(a), plain, fast)
    emb = ratio["embed_tokens"]["embedding"][...]  # [V, D]
    np.testing.assert_allclose(emb[:FIRST_NEW], 1.0, rtol=1e-6)
    np.testing.assert_allclose(emb[FIRST_NEW:], 25.0, rtol=1e-6)
    if not tied:
        head = ratio["lm_head"]["kernel"][...]  # [D, V]
        np.testing.assert_allclose(head[:, :FIRST_NEW], 1.0, rtol=1e-6)
        np.testing.assert_allclose(head[:, FIRST_NEW:], 25.0, rtol=1e-6)
    # Everything else is plain AdamW.
    others = [
        np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(ratio)
        if "embed_tokens" not in jax.tree_util.keystr(path)
        and "lm_head" not in jax.tree_util.keystr(path)
    ]
    assert others and all(np.allclose(x, 1.0, rtol=1e-6) for x in others)
