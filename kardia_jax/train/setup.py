"""From a run config to the pieces a training loop needs: mesh and rules, the
planned model config, and checks that the config fits the devices."""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from kardia_jax.config_files import sharding_preset
from kardia_jax.errors import ConfigError
from kardia_jax.models import ModelConfig, get_preset
from kardia_jax.sharding import batch_shards, make_mesh


def mesh_and_rules(config: ConfigDict):
    """The mesh and rules of `config.sharding` (a preset name), with any axis sizes
    in `config.mesh` overriding the preset's."""
    preset = sharding_preset(config.sharding, config.get("config_file"))
    axes = dict(preset.mesh)
    for k, v in dict(config.get("mesh", {}) or {}).items():
        if v == 0:
            continue
        if k not in axes:
            raise ConfigError(f"mesh.{k}: the {config.sharding!r} preset has axes {tuple(axes)}")
        axes[k] = int(v)
    dcn = {k: int(v) for k, v in dict(config.get("dcn_mesh", {}) or {}).items()}
    try:
        mesh = make_mesh(axes, dcn_axis_sizes=dcn)
    except ConfigError as e:
        raise ConfigError(f"sharding={config.sharding!r}: {e}") from None
    return mesh, tuple(tuple(r) for r in preset.rules)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def planned_model_config(mcfg: ConfigDict, vocab_size: int) -> ModelConfig:
    """The model to train. `model.path` (a Hugging Face dir) wins; else `model.preset`;
    else the shape in `model.init` (tiny random models). The vocabulary grows to hold
    every tokenizer id (span markers included), padded for even sharding."""
    numerics = dict(
        param_dtype=mcfg.param_dtype,
        dtype=mcfg.compute_dtype,
        scan_layers=bool(mcfg.scan_layers),
        remat=mcfg.remat,
        kernels=mcfg.get("kernels", "auto"),
    )
    if mcfg.path:
        cfg = ModelConfig.from_pretrained(mcfg.path, **numerics)
    elif mcfg.preset:
        cfg = get_preset(mcfg.preset).replace(**numerics)
    else:
        shape = dict(mcfg.init)
        shape.setdefault("vocab_size", 0)
        cfg = ModelConfig(**shape, **numerics)
    need = _round_up(vocab_size, int(mcfg.vocab_multiple))
    return cfg.replace(vocab_size=need) if need > cfg.vocab_size else cfg


def check_batch(global_batch: int, microbatches: int, mesh, rules) -> int:
    """Returns the per-host batch; raises naming the setting that does not divide."""
    dp = batch_shards(mesh, rules)
    if global_batch % microbatches:
        raise ConfigError(
            f"train.global_batch={global_batch} is not divisible by "
            f"train.microbatches={microbatches}"
        )
    if (global_batch // microbatches) % dp:
        raise ConfigError(
            f"train.global_batch={global_batch} / train.microbatches={microbatches} is not "
            f"divisible by the data-parallel size {dp} of the mesh {dict(mesh.shape)}"
        )
    if global_batch % jax.process_count():
        raise ConfigError(
            f"train.global_batch={global_batch} is not divisible by {jax.process_count()} processes"
        )
    return global_batch // jax.process_count()
