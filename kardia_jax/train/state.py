"""Train state (parameters, optimizer state, step, non-finite counters) and its
sharded creation: `jax.eval_shape` -> shardings -> `jit(init, out_shardings=...)`,
so full weights never sit on one host."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kardia_jax.errors import ConfigError
from kardia_jax.models import (
    Transformer,
    abstract_model,
    kernels,
    load_hf_model,
    resize_token_embeddings,
)
from kardia_jax.models.config import ModelConfig
from kardia_jax.sharding import Rules, batch_sharding, head_axes, param_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of applied or skipped updates
    params: nnx.State  # the model's nnx.Param leaves
    opt_state: Any
    nonfinite_streak: jax.Array  # consecutive skipped (non-finite) updates
    nonfinite_total: jax.Array


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract: TrainState, tx, mesh: Mesh, rules: Rules) -> TrainState:
    """Shardings for every leaf: parameters by the rules table, optimizer moments
    like the parameters they track, scalars replicated."""
    params = param_shardings(abstract.params, mesh, rules)
    opt = optax.tree_utils.tree_map_params(
        tx,
        lambda _, s: s,
        abstract.opt_state,
        params,
        transform_non_params=lambda _: _replicated(mesh),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    rep = _replicated(mesh)
    return TrainState(
        step=rep, params=params, opt_state=opt, nonfinite_streak=rep, nonfinite_total=rep
    )


def _new_state(params, tx) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        opt_state=tx.init(params),
        nonfinite_streak=zero,
        nonfinite_total=zero,
    )


def abstract_train_state(
    cfg: ModelConfig, tx, mesh: Mesh | None = None, rules: Rules | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state of ShapeDtypeStructs). With a mesh, the graphdef pins the
    residual stream to the batch layout (`Transformer.constrain_activations`)."""
    model = abstract_model(kernels.resolve(cfg, mesh))
    if mesh is not None:
        model.constrain_activations(batch_sharding(mesh, rules, ndim=1), head_axes(mesh, rules))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, jax.eval_shape(lambda p: _new_state(p, tx), params)


def init_train_state(
    cfg: ModelConfig, tx, mesh: Mesh, rules: Rules, seed: int = 0, hf_path: str | None = None
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """(graphdef, state, state shardings). Random init runs inside one jit whose
    out_shardings place every leaf; a Hugging Face checkpoint is read slice by slice
    straight into the same layout."""
    cfg = kernels.resolve(cfg, mesh)
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)

    if hf_path is None:

        def init(seed_key):
            model = Transformer(cfg, rngs=nnx.Rngs(params=seed_key))
            return _new_state(nnx.state(model, nnx.Param), tx)

        state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    else:
        model = load_hf_model(
            hf_path,
            cfg.param_dtype,
            mesh,
            compute_dtype=cfg.dtype,
            rules=rules,
            scan_layers=cfg.scan_layers,
            remat=cfg.remat,
            kernels=cfg.kernels,
        )
        # Added special tokens (the span markers) may need rows the checkpoint lacks.
        model = resize_token_embeddings(model, cfg.vocab_size)
        got = model.config.replace(generation_config_json=None)
        if got != cfg.replace(generation_config_json=None):
            raise ConfigError(
                f"model.path={hf_path}: its config.json differs from the planned model"
            )
        params = nnx.state(model, nnx.Param)
        state = jax.jit(
            lambda p: _new_state(p, tx),
            in_shardings=(shardings.params,),
            out_shardings=shardings,
        )(params)
    return graphdef, state, shardings


def param_bytes_per_device(state_like: TrainState, shardings: TrainState) -> int:
    """Bytes of parameters + optimizer state one device holds (from shapes only)."""
    total = 0
    leaves = jax.tree.leaves(state_like)
    shards = jax.tree.leaves(shardings)
    for x, s in zip(leaves, shards, strict=True):
        shard_shape = s.shard_shape(x.shape)
        n = 1
        for d in shard_shape:
            n *= d
        total += n * jnp.dtype(x.dtype).itemsize
    return total
