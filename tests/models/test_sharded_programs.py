"""Sharded programs on a data x fsdp mesh of 8 CPU devices, judged by the
collectives XLA puts in the compiled HLO: the fused SFT log-prob sum keeps every
chunk on all the data shards, and a model read onto a mesh pins its activations
to the batch as the trained policy does."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kardia_jax.models import init_model, load_hf_model, resize_token_embeddings
from kardia_jax.models.logprobs import (
    sequence_log_probs,
    token_log_probs,
    weighted_log_prob_sum,
)
from kardia_jax.sharding import batch_sharding, make_mesh, param_shardings

from .test_decoder import TINY

_COLLECTIVE = re.compile(
    r" (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
)


def _collectives(compiled) -> collections.Counter:
    return collections.Counter(_COLLECTIVE.findall(compiled.as_text()))


def _mesh():
    return make_mesh({"data": 2, "fsdp": 4})


def _compiled_sum_and_grads(loss, cfg, mesh, b=8, k=16):
    """value_and_grad of `loss(model, hidden, targets, weight)` compiled with FSDP
    parameters and batch-sharded inputs, as the SFT step places them."""
    graphdef, params = nnx.split(init_model(cfg))
    abstract = jax.eval_shape(lambda: params)

    def f(params, h, y, w):
        return loss(nnx.merge(graphdef, params), h, y, w)

    jitted = jax.jit(
        jax.value_and_grad(f, argnums=(0, 1)),
        in_shardings=(
            param_shardings(abstract, mesh),
            batch_sharding(mesh, ndim=1),
            batch_sharding(mesh),
            batch_sharding(mesh),
        ),
    )
    h = jax.ShapeDtypeStruct((b, k, cfg.hidden_size), jnp.float32)
    y = jax.ShapeDtypeStruct((b, k), jnp.int32)
    return jitted.lower(abstract, h, y, y).compile()


def test_fused_sum_chunks_span_every_data_shard():
    # Chunks cut from the flattened [B * K] rows sit on a subset of the data shards,
    # and XLA moves rows between devices to run each one (collective-permutes and
    # extra gathers). Chunked along K, every chunk is laid out like the batch: no
    # resharding, and no more traffic than autodiff of the plain chunked form.
    mesh = _mesh()
    for tied in (True, False):
        cfg = TINY.replace(tie_word_embeddings=tied)

        def fused(model, h, y, w):
            return weighted_log_prob_sum(model, h, y, w, chunk=4)

        def plain(model, h, y, w):
            return jnp.sum(token_log_probs(model, h, y, chunk=4) * w)

        got = _collectives(_compiled_sum_and_grads(fused, cfg, mesh))
        ref = _collectives(_compiled_sum_and_grads(plain, cfg, mesh))
        assert got["collective-permute"] == got["all-to-all"] == 0, (tied, got)
        assert sum(got.values()) <= sum(ref.values()), (tied, got, ref)


def _log_prob_program(model, mesh, b=8, t=16):
    graphdef, params = nnx.split(model)

    def f(params, ids, mask):
        return sequence_log_probs(nnx.merge(graphdef, params), ids, mask, chunk=8)

    jitted = jax.jit(
        f,
        in_shardings=(
            jax.tree.map(lambda x: x.sharding, params),
            batch_sharding(mesh),
            batch_sharding(mesh),
        ),
    )
    ids = jax.ShapeDtypeStruct((b, t), jnp.int32)
    return jitted.lower(params, ids, ids).compile()


def test_model_loaded_onto_a_mesh_pins_activations_to_the_batch(hf_checkpoint):
    # The frozen reference, the judge and the eval policy come from load_hf_model.
    # Unpinned, the partitioner follows the FSDP-sharded weights and splits the
    # activations along `embed`: every matmul becomes a full-batch partial sum
    # (all-reduces). Pinned, the weights are all-gathered instead, as for the
    # trained policy (train/state.abstract_train_state).
    path, _ = hf_checkpoint("qwen2_untied")
    mesh = _mesh()
    model = load_hf_model(path, mesh=mesh)
    pinned = _collectives(_log_prob_program(model, mesh))

    trained_like = load_hf_model(path, mesh=mesh)
    trained_like.constrain_activations(batch_sharding(mesh, ndim=1))
    assert pinned == _collectives(_log_prob_program(trained_like, mesh))

    unpinned = load_hf_model(path, mesh=mesh)
    unpinned.constrain_activations(None)
    assert _collectives(_log_prob_program(unpinned, mesh))["all-reduce"] > 0
    assert pinned["all-reduce"] == 0, pinned

    # GRPO's reference grows its vocabulary for the span markers: the pin stays.
    grown = resize_token_embeddings(model, model.config.vocab_size + 8)
    assert grown.activation_sharding == model.activation_sharding


def test_pinned_model_gives_unpinned_values_and_takes_an_indivisible_batch(hf_checkpoint):
    # The pin changes placement, never values; a batch the 8 data shards cannot
    # split (the judge's one-row shared head) runs unpinned rather than padded.
    path, _ = hf_checkpoint("qwen2_tied")
    mesh = _mesh()
    plain = load_hf_model(path)
    pinned = load_hf_model(path, mesh=mesh)
    rng = np.random.default_rng(0)

    def run(model, ids):
        graphdef, params = nnx.split(model)
        return jax.jit(lambda p, x: sequence_log_probs(nnx.merge(graphdef, p), x))(params, ids)

    for b in (8, 1):
        ids = jnp.asarray(rng.integers(0, plain.config.vocab_size, (b, 12)), jnp.int32)
        np.testing.assert_allclose(run(pinned, ids), run(plain, ids), rtol=1e-5, atol=1e-5)
