"""`kardia-jax compile-check`: lowers and compiles a run's jitted steps ahead of time
for the target mesh, from shapes alone (no weights, no data), and reports what XLA
says each device will hold and compute, so a config is known to fit before a pod is
rented.

    kardia-jax compile-check --config configs/sft_qwen2p5_3b.py --devices 64
    kardia-jax compile-check --config configs/grpo_tiny.py --config.model.path=SFT/hf
    kardia-jax compile-check --config configs/sft_qwen2p5_7b.py --topology v5e:4x4 --budget-gib 16

An SFT config compiles the SFT train step at the largest bucket (every position a
target: the worst case of the target gather); a GRPO config compiles the GRPO update
on one minibatch of rollouts (longest prompt bucket + `rollout.max_new_tokens`) and
the log-prob forward used for the reference and old policies. Per device: the
arguments, outputs, donated (aliased) bytes and temporaries from
`compiled.memory_analysis()`, and FLOPs from `compiled.cost_analysis()`.
`--devices N` compiles for N fake CPU devices; `--topology NAME` for a TPU slice
through `jax.experimental.topologies` (needs libtpu, no TPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from kardia_jax.errors import ConfigError, KardiaError

GIB = 2**30


class MemoryBudgetExceeded(KardiaError):
    """A compiled step needs more memory per device than the configured budget."""


@dataclasses.dataclass
class ProgramReport:
    """What XLA reports for one compiled program, per device."""

    name: str
    shapes: str  # the batch it was compiled for, in words
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (counted once)
    temp_bytes: int
    code_bytes: int
    flops: float  # XLA's cost analysis of the per-device program
    # `train_flops` per device. XLA's figure counts a loop body once (the layer scan,
    # the log-prob chunks, microbatches), so below this estimate it is a lower bound.
    estimate_flops: float | None = None
    # Arrays the run keeps on the device meanwhile that are not this program's
    # arguments (GRPO: the frozen reference's parameters; the train state while the
    # log-prob forward runs).
    resident_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        """Live at the peak: arguments + outputs not aliased to them + temporaries +
        other resident arrays."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.resident_bytes
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}


def force_cpu_devices(n: int) -> None:
    """N fake CPU devices. Must run before JAX initialises a backend."""
    import jax

    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
    ).strip()
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # backends already initialised in this process
        if len(jax.devices()) != n or jax.default_backend() != "cpu":
            raise ConfigError(
                f"--devices {n}: JAX already runs with {len(jax.devices())} "
                f"{jax.default_backend()} devices in this process ({e})"
            ) from None


def topology_devices(name: str):
    """Compile-only devices of a TPU slice (e.g. `v5e:2x4`, `v4:2x2x2`)."""
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(name, "tpu").devices
    except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown name
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"--topology {name}: cannot build a compile-only TPU topology here ({first}); "
            "it needs libtpu installed (pip install 'jax[tpu]'); use --devices N for fake "
            "CPU devices instead"
        ) from None


def _mesh(config, devices):
    from kardia_jax.train.setup import mesh_and_rules

    if devices is None:
        return mesh_and_rules(config)
    # mesh_and_rules lays out jax.devices(); a topology brings its own devices.
    from kardia_jax.config_files import sharding_preset
    from kardia_jax.sharding import make_mesh

    preset = sharding_preset(config.sharding, config.get("config_file"))
    axes = dict(preset.mesh)
    for k, v in dict(config.get("mesh", {}) or {}).items():
        if v:
            axes[k] = int(v)
    return make_mesh(axes, devices=devices), tuple(tuple(r) for r in preset.rules)


def _report(name: str, shapes: str, compiled, estimate=None, resident=0) -> ProgramReport:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return ProgramReport(
        name=name,
        shapes=shapes,
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        flops=float((cost or {}).get("flops", float("nan"))),
        estimate_flops=estimate,
        resident_bytes=int(resident),
    )


def train_flops(cfg, rows: int, length: int, head_positions: int) -> float:
    """Forward + backward FLOPs of a step: 6 x (layer matmul parameters) per token, 6 x
    V x D per position projected onto the vocabulary (the step projects only
    `head_positions` per row), and causal attention's 12 x L x heads x head_dim x T."""
    head = cfg.vocab_size * cfg.hidden_size
    body = cfg.num_params() - head * (1 if cfg.tie_word_embeddings else 2)
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length
    return rows * (length * (6.0 * body + attention) + head_positions * 6.0 * head)


def _struct(shape, dtype, sharding):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def compile_check(config, devices=None) -> dict:
    """Compiles the config's steps for the mesh of `devices` (default: jax.devices())
    and returns {"mesh", "model", "programs": [ProgramReport, ...]}."""
    import jax
    import jax.numpy as jnp

    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.train.optim import make_optimizer
    from kardia_jax.train.setup import planned_model_config
    from kardia_jax.train.state import abstract_train_state, batch_sharding, state_shardings

    grpo = "rollout" in config
    if grpo and not (config.model.path or config.model.preset or dict(config.model.init)):
        raise ConfigError(
            "model.path: a GRPO config compiles against its policy's shape; pass the SFT "
            "export (--config.model.path=DIR; only its config.json is read) or "
            "--config.model.preset=NAME"
        )
    mesh, rules = _mesh(config, devices)
    tokenizer = load_tokenizer(config.data.tokenizer or None)
    cfg = planned_model_config(config.model, len(tokenizer))
    # The schedule's length changes no shape; SFT's optimizer also scales the new
    # tokens' rows, as the driver's does.
    if grpo:
        tx = make_optimizer(config.train, 1000)
    else:
        from kardia_jax.train.sft import sft_optimizer

        tx = sft_optimizer(config.train, 1000, tokenizer)
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    state = jax.tree.map(lambda x, s: _struct(x.shape, x.dtype, s), abstract, shardings)
    bsh, vsh = batch_sharding(mesh, rules), batch_sharding(mesh, rules, ndim=1)
    length = max(tuple(config.data.buckets) or (int(config.data.max_length),))
    n_dev = mesh.devices.size
    programs = []

    if not grpo:
        from kardia_jax.train.setup import check_batch
        from kardia_jax.train.step import jit_train_step, step_options

        check_batch(config.train.global_batch, config.train.microbatches, mesh, rules)
        b, t = int(config.train.global_batch), int(length)
        i32 = jnp.int32
        batch = {k: _struct((b, t), i32, bsh) for k in ("input_ids", "attention_mask", "loss_mask")}
        if config.train.gather_targets:
            k = t - 1  # worst case of `target_bucket`: every position a target
            batch["target_index"] = _struct((b, k), i32, bsh)
            batch["target_weight"] = _struct((b, k), i32, bsh)
        step = jit_train_step(graphdef, tx, shardings, bsh, **step_options(config.train))
        compiled = step.lower(state, batch).compile()
        est = train_flops(
            cfg, b, t, batch["target_index"].shape[1] if "target_index" in batch else t
        )
        est /= n_dev
        shapes = f"batch {b} x {t} tokens, microbatches {config.train.microbatches}"
        programs.append(_report("sft_train_step", shapes, compiled, est))
    else:
        from kardia_jax.data.pipeline import bucket_length
        from kardia_jax.rl.config import minibatch_rows, step_batch
        from kardia_jax.rl.grpo import prompt_buckets
        from kardia_jax.rl.step import GRPOLoss, check_microbatches, jit_grpo_update, jit_log_probs
        from kardia_jax.sharding import batch_shards
        from kardia_jax.train.state import param_bytes_per_device
        from kardia_jax.train.step import step_options

        rc = config.rollout
        # The GRPO driver's own check: rollout.global_batch completions per step.
        mb_rows = minibatch_rows(config, batch_shards(mesh, rules))
        check_microbatches(mb_rows, int(config.train.microbatches))
        # The driver pads prompts to a bucket (the sampler's powers of two when none are
        # set): the one a data.max_length prompt lands in.
        if not tuple(config.data.buckets):
            length = bucket_length(int(config.data.max_length), prompt_buckets(config))
        rows = step_batch(rc)[1]
        n = int(rc.max_new_tokens)
        t = int(length) + n
        loss = GRPOLoss.from_config(config)
        f32, i32 = jnp.float32, jnp.int32
        batch = {
            "input_ids": _struct((mb_rows, t), i32, bsh),
            "attention_mask": _struct((mb_rows, t), i32, bsh),
            "completion_mask": _struct((mb_rows, n), i32, bsh),
            "old_logp": _struct((mb_rows, n), f32, bsh),
            "ref_logp": _struct((mb_rows, n), f32, bsh),
            "advantages": _struct((mb_rows,), f32, vsh),
        }
        step = jit_grpo_update(
            graphdef, tx, loss, shardings, bsh, vsh, **step_options(config.train)
        )
        compiled = step.lower(state, batch).compile()
        est = train_flops(cfg, mb_rows, t, n) / n_dev
        shapes = (
            f"{mb_rows} rollouts x ({length} prompt + {n} completion) tokens, "
            f"microbatches {config.train.microbatches}"
        )
        params_bytes = param_bytes_per_device(abstract.params, shardings.params)
        state_bytes = param_bytes_per_device(abstract, shardings)
        ref_bytes = params_bytes if loss.beta > 0 else 0
        if ref_bytes:
            shapes += f"; + frozen reference {ref_bytes / GIB:.3f} GiB resident"
        programs.append(_report("grpo_update_step", shapes, compiled, est, ref_bytes))

        logp = jit_log_probs(loss, n, params_shardings=shardings.params, bsh=bsh)
        ids = _struct((rows, t), i32, bsh)
        compiled = logp.lower(graphdef, state.params, ids, ids).compile()
        est = train_flops(cfg, rows, t, n) / 3 / n_dev  # forward only
        # Its arguments are one set of parameters; the train state and (with beta > 0)
        # the other set stay resident.
        resident = state_bytes - params_bytes + ref_bytes
        shapes = f"{rows} rollouts; + train state / reference {resident / GIB:.3f} GiB resident"
        programs.append(
            _report("grpo_log_probs (reference / old policy)", shapes, compiled, est, resident)
        )
    return {
        "mesh": dict(mesh.shape),
        "platform": mesh.devices.flat[0].platform,
        "device_kind": mesh.devices.flat[0].device_kind,
        "model": {
            "params": cfg.num_params(),
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
            "param_dtype": cfg.param_dtype,
            "compute_dtype": cfg.dtype,
            "remat": cfg.remat,
        },
        "programs": programs,
    }


def check_budget(programs: list[ProgramReport], budget_gib: float | None, source: str) -> None:
    if not budget_gib or budget_gib <= 0:
        return
    over = [p for p in programs if p.peak_bytes > budget_gib * GIB]
    if over:
        p = max(over, key=lambda p: p.peak_bytes)
        raise MemoryBudgetExceeded(
            f"{p.name} needs {p.peak_bytes / GIB:.3f} GiB per device (arguments "
            f"{p.argument_bytes / GIB:.3f} + outputs {p.output_bytes / GIB:.3f} - donated "
            f"{p.alias_bytes / GIB:.3f} + temporaries {p.temp_bytes / GIB:.3f} + other resident "
            f"{p.resident_bytes / GIB:.3f} GiB), over the "
            f"budget of {budget_gib:g} GiB per device ({source}). Try more devices, "
            "sharding=fsdp, model.remat=full, train.microbatches or a shorter data.buckets"
        )


def format_report(result: dict) -> str:
    lines = [
        f"mesh {result['mesh']} on {result['platform']} ({result['device_kind']}); model "
        f"{result['model']['params'] / 1e6:.1f}M params, {result['model']['param_dtype']} "
        f"params, {result['model']['compute_dtype']} compute, remat {result['model']['remat']}",
        f"{'program':<42} {'args':>9} {'outputs':>9} {'donated':>9} {'temps':>9} "
        f"{'peak':>9} {'TFLOPs':>9}",
    ]
    for p in result["programs"]:
        g = [
            x / GIB
            for x in (p.argument_bytes, p.output_bytes, p.alias_bytes, p.temp_bytes, p.peak_bytes)
        ]
        lines.append(
            f"{p.name:<42} " + " ".join(f"{x:8.3f}G" for x in g) + f" {p.flops / 1e12:9.4f}"
        )
        lines.append(f"  {p.shapes}; per device" + _estimate(p))
    return "\n".join(lines)


def _estimate(p: ProgramReport) -> str:
    if not p.estimate_flops:
        return ""
    return (
        f"; estimate (6N + attention) {p.estimate_flops / 1e12:.4f} TFLOPs "
        "(XLA counts each loop body once)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/*.py file (SFT or GRPO)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--devices", type=int, help="compile for N fake CPU devices")
    target.add_argument("--topology", help="compile for a TPU slice, e.g. v5e:2x4 (needs libtpu)")
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        help="fail if a step needs more GiB per device (default: compile_check.budget_gib "
        "of the config, else the device's own memory when it reports one)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:
    if args.devices is not None:
        if args.devices < 1:
            raise ConfigError(f"--devices {args.devices}: expected a positive count")
        force_cpu_devices(args.devices)
    from kardia_jax.config_files import load_config

    config = load_config(args.config, args.config_overrides)
    devices = topology_devices(args.topology) if args.topology else None
    result = compile_check(config, devices)
    if args.json:
        out = {**result, "programs": [p.as_dict() for p in result["programs"]]}
        print(json.dumps(out, indent=2))
    else:
        print(format_report(result))
    budget, source = args.budget_gib, "--budget-gib"
    if budget is None and "compile_check" in config:
        budget, source = config.compile_check.get("budget_gib"), "compile_check.budget_gib"
    if budget is None and devices is None:
        budget, source = _device_memory_gib()
    check_budget(result["programs"], budget, source)
    if budget:
        peak = max(p.peak_bytes for p in result["programs"]) / GIB
        print(f"fits: peak {peak:.3f} GiB per device <= budget {budget:g} GiB ({source})")
    return 0


def _device_memory_gib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] / GIB, f"{jax.devices()[0].device_kind} memory"
    return None, ""
