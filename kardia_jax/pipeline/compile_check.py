"""`kardia-jax compile-check`: lowers and compiles every program a run compiles, ahead
of time, for the target mesh, from shapes alone (no weights, no data), and reports what
the compiler says each device will hold and compute, so a config is known to fit
before a pod is rented.

    kardia-jax compile-check --config configs/sft_qwen2p5_3b.py --devices 64
    kardia-jax compile-check --config configs/grpo_tiny.py --config.model.path=SFT/hf
    kardia-jax compile-check --config configs/sft_qwen2p5_7b.py --topology v5e:4x4 --json

Programs, each built by the factory its driver calls, at the run's largest shapes:
- SFT: the train step at the largest bucket (every position a target);
- GRPO: the rollout prefill and decode (the run's prompt bucket, group size and
  `rollout.max_new_tokens`), with `select.every` on the best-checkpoint selection's
  prefill and decode (held-out prompts, one row each), the log-prob forward of the
  reference and old policies, the update on one minibatch, and the judge's programs
  when the reward uses one;
- evaluation (`configs/eval_*.py`): the generation prefill and decode, and the
  judge's programs when `judge.path` names a checkpoint dir.
The judge's programs: its scoring; in "generate" mode its sampler's prefill and
decode, and the scoring that a reply it cannot parse falls back to.
Per device: arguments, outputs, donated (aliased) bytes and temporaries from
`compiled.memory_analysis()`, what the run keeps on the device meanwhile (train state,
frozen reference, judge), FLOPs from `compiled.cost_analysis()`, and the custom calls
in the compiled program (a Pallas kernel shows as `tpu_custom_call`). `--devices N`
compiles for N fake CPU devices; `--topology NAME` for a TPU slice through
`jax.experimental.topologies` (needs libtpu, no TPU), with the TPU kernels.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import re

from kardia_jax.errors import ConfigError, KardiaError

GIB = 2**30


LOG_PROBS = "grpo_log_probs (reference / old policy)"  # one program serves both


class MemoryBudgetExceeded(KardiaError):
    """A compiled step needs more memory per device than the configured budget."""


@dataclasses.dataclass
class ProgramReport:
    """What the compiler reports for one compiled program, per device."""

    name: str
    shapes: str  # the batch it was compiled for, in words
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (counted once)
    temp_bytes: int
    code_bytes: int
    flops: float  # the compiler's cost analysis of the per-device program
    # `train_flops` per device. The compiler counts a loop body once (the layer scan,
    # the log-prob chunks, microbatches), so below this estimate it is a lower bound.
    estimate_flops: float | None = None
    # Arrays the run keeps on the device meanwhile that are not this program's
    # arguments (GRPO: the frozen reference and the judge; the train state while the
    # sampler or the log-prob forward runs).
    resident_bytes: int = 0
    custom_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    # The TPU compiler's own peak of live buffers (`peak_memory_in_bytes`; None
    # elsewhere). For a large program it is under `peak_bytes` (the temporaries are
    # one allocation sized for the whole program, and not every argument is live when
    # they peak); for a tiny one it can be over (fixed allocations). The budget is
    # checked against the larger: `needed_bytes`.
    compiler_peak_bytes: int | None = None

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

    @property
    def needed_bytes(self) -> int:
        """What must fit: the larger of `peak_bytes` and the compiler's own peak
        with the other resident arrays beside it."""
        return max(self.peak_bytes, (self.compiler_peak_bytes or 0) + self.resident_bytes)

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "peak_bytes": self.peak_bytes,
            "needed_bytes": self.needed_bytes,
        }


# ------------------------------------------------------------------------ targets

# HBM per chip, from Google Cloud's TPU pages (the "HBM capacity" rows):
# v4 32 GiB https://cloud.google.com/tpu/docs/v4 ; v5e 16 and v6e 32
# https://cloud.google.com/tpu/docs/v6e (its v5e / v6e table) ; v5p 95
# https://cloud.google.com/tpu/docs/v5p-training . Slice names count TensorCores for
# v4 and v5p (2 per chip: v5p-8 is 4 chips) and chips for v5e and v6e.
CHIPS = {  # generation: (HBM GiB per chip, TensorCores per chip, topology rank)
    "v4": (32, 2, 3),
    "v5e": (16, 1, 2),
    "v5p": (95, 2, 3),
    "v6e": (32, 1, 2),
}
TOPOLOGY_FORMS = "v4:AxBxC, v5p:AxBxC, v5e:AxB, v6e:AxB (e.g. v5p:2x2x1, v5e:2x4)"


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A TPU slice named as Google Cloud names it, with its topology and chip memory."""

    generation: str
    topology: str  # "v5p:2x2x1"
    chips: int
    hbm_gib: float  # per chip

    @property
    def name(self) -> str:  # "v5p-8": TensorCores for v4 / v5p, chips for v5e / v6e
        return f"{self.generation}-{self.chips * CHIPS[self.generation][1]}"

    def describe(self) -> str:
        return f"{self.name} ({self.topology}, {self.chips} chips, {self.hbm_gib:g} GiB HBM/chip)"


def parse_topology(name: str) -> TpuSlice:
    m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)", name.strip())
    dims = [int(d) for d in m.group(2).split("x")] if m else []
    if not m or len(dims) != CHIPS[m.group(1)][2] or min(dims) < 1:
        raise ConfigError(f"--topology {name}: expected one of {TOPOLOGY_FORMS}")
    chips = 1
    for d in dims:
        chips *= d
    return TpuSlice(m.group(1), name.strip(), chips, CHIPS[m.group(1)][0])


def topology_devices(name: str):
    """Compile-only devices of a TPU slice (e.g. `v5e:2x4`, `v4:2x2x2`)."""
    parse_topology(name)
    # Compile-only: no chip is opened, so the lock that keeps two processes off one
    # TPU host is not needed (and would fail while another compile-check runs).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(name.strip(), "tpu").devices
    except Exception as e:  # noqa: BLE001 - libtpu missing or a shape it refuses
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"--topology {name}: cannot build a compile-only TPU topology here ({first}); "
            "it needs libtpu installed (pip install -e '.[tpu]') and a slice of whole hosts "
            f"({TOPOLOGY_FORMS}); use --devices N for fake CPU devices instead"
        ) from None


def devices_per_chip(devices) -> int:
    """Devices sharing a chip: compile-only v4 topologies list each TensorCore."""
    coords = collections.Counter(tuple(getattr(d, "coords", (d.id,))) for d in devices)
    return max(coords.values())


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


# ------------------------------------------------------------------ measurement


def _mesh(config, devices):
    """The run's mesh and rules over `devices` (default: jax.devices()); an eval config
    without `sharding` runs on one device, no mesh: (None, rules)."""
    from kardia_jax.config_files import sharding_preset
    from kardia_jax.sharding import DEFAULT_RULES, make_mesh
    from kardia_jax.train.setup import mesh_and_rules

    if not config.get("sharding"):
        return None, DEFAULT_RULES
    if devices is None:
        return mesh_and_rules(config)
    # mesh_and_rules lays out jax.devices(); a topology brings its own devices.
    preset = sharding_preset(config.sharding, config.get("config_file"))
    axes = dict(preset.mesh)
    for k, v in dict(config.get("mesh", {}) or {}).items():
        if v:
            axes[k] = int(v)
    return make_mesh(axes, devices=devices), tuple(tuple(r) for r in preset.rules)


CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


def custom_calls(compiled) -> dict[str, int]:
    """Custom-call targets in the compiled program, counted (`tpu_custom_call`: a
    Pallas / Mosaic kernel)."""
    text = compiled.as_text() or ""
    return dict(sorted(collections.Counter(CUSTOM_CALL.findall(text)).items()))


def compile_program(lowered, name: str):
    """`lowered.compile()`; a TPU compiler that finds the program cannot fit its
    chip's HBM refuses it (RESOURCE_EXHAUSTED), which is reported as the budget
    failure it is, naming the program and the compiler's own figures."""
    import jax

    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        first = message.strip().splitlines()[0]
        raise MemoryBudgetExceeded(
            f"{name} does not fit: the compiler refused it ({first}). Try more devices, "
            "sharding=fsdp, model.remat=full, train.microbatches or a shorter data.buckets"
        ) from None


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
        custom_calls=custom_calls(compiled),
        compiler_peak_bytes=_compiler_peak(compiled, mem),
    )


def _compiler_peak(compiled, mem) -> int | None:
    """The TPU compiler's peak of live buffers; None elsewhere (XLA:CPU reports only
    its arguments there)."""
    import jax

    shardings = jax.tree.leaves(compiled.input_shardings)
    devices = shardings[0].device_set if shardings else set()
    if not devices or next(iter(devices)).platform != "tpu":
        return None
    return int(getattr(mem, "peak_memory_in_bytes", 0) or 0) or None


def train_flops(cfg, rows: int, length: int, head_positions: int) -> float:
    """Forward + backward FLOPs of a step: 6 x (layer matmul parameters) per token, 6 x
    V x D per position projected onto the vocabulary (the step projects only
    `head_positions` per row), and causal attention's 12 x L x heads x head_dim x T."""
    head = cfg.vocab_size * cfg.hidden_size
    body = cfg.num_params() - head * (1 if cfg.tie_word_embeddings else 2)
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length
    return rows * (length * (6.0 * body + attention) + head_positions * 6.0 * head)


def _struct(shape, dtype, sharding=None):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class Target:
    """Where the programs compile: the mesh (None: one device), its rules, and the
    devices, whose platform picks the kernels."""

    mesh: object
    rules: tuple
    devices: list

    @property
    def size(self) -> int:
        return self.mesh.devices.size if self.mesh is not None else 1


def for_target(cfg, target: Target):
    """`cfg` with its kernels chosen for the target's devices, never the process's
    default backend (CPU in a compile-only process)."""
    from kardia_jax.models import kernels

    if cfg.kernels != "auto":
        return cfg
    (platform,) = {d.platform for d in target.devices}
    return cfg.replace(kernels=kernels.for_platform(platform))


def placed_model(cfg, target: Target):
    """(graphdef, params as sharded ShapeDtypeStructs) of a checkpoint read onto the
    target as `load_hf_model` places it (parameters by the rules table, activations
    pinned to the batch layout)."""
    import jax
    from flax import nnx

    from kardia_jax.models import abstract_model
    from kardia_jax.sharding import batch_sharding, head_axes, param_shardings

    model = abstract_model(for_target(cfg, target))
    if target.mesh is not None:
        model.constrain_activations(
            batch_sharding(target.mesh, target.rules, ndim=1),
            head_axes(target.mesh, target.rules),
        )
    graphdef, params = nnx.split(model)
    if target.mesh is None:
        single = jax.sharding.SingleDeviceSharding(target.devices[0])
        shardings = jax.tree.map(lambda _: single, params)
    else:
        shardings = param_shardings(params, target.mesh, target.rules)
    return graphdef, jax.tree.map(lambda x, s: _struct(x.shape, x.dtype, s), params, shardings)


# --------------------------------------------------------------------- programs


def sampler_programs(sampler, graphdef, params, prompts, length, budget, sampling, group, label):
    """The sampler's prefill and decode (`Sampler.programs`, the one builder) for
    `prompts` prompts of `length` tokens, each decoded on `group` rows for `budget`
    tokens: [(name, shapes, compiled)]."""
    import jax
    import jax.numpy as jnp

    b, p, n = sampler.shapes([[0] * length] * prompts, budget)
    group = 2 if b * group == 1 else group  # as Sampler.prefill decodes a single row
    prefill, decode = sampler.programs(b, p, n, sampling, group=group)
    i32 = jnp.int32
    key = jax.eval_shape(lambda: jax.random.key(0))
    stop = _struct((8,), i32)  # one slot block of stop ids (`sampler._id_array`)
    args = (_struct((b, p), i32), _struct((b, p), i32), _struct((b * group,), jnp.bool_))
    pre = compile_program(
        prefill.lower(graphdef, params, *args, stop, stop, key, budget), f"{label}_prefill"
    )
    state = jax.tree.map(
        lambda o, s: _struct(o.shape, o.dtype, s), pre.out_info, pre.output_shardings
    )
    dec = compile_program(decode.lower(graphdef, params, state, n), f"{label}_decode")
    shapes = f"{b} prompts x {p} tokens, {group} rows each, {n} new tokens"
    return [(f"{label}_prefill", shapes, pre), (f"{label}_decode", shapes, dec)]


def judge_programs(config_dir: str, settings, dtype: str, target: Target, rows: int, length):
    """The programs the judge compiles for `rows` candidates per call at the length
    bucket holding `length` tokens (the longest when None), its model shape from the
    checkpoint dir's config.json and its tokenizer (no weights): in "expected" mode its
    scoring program (`RubricJudge.scoring_program`); in "generate" mode its sampler's
    prefill and decode (`rewards/generate.py`), and the scoring program when a reply it
    cannot parse falls back to the expected score. ([(name, shapes, compiled)],
    parameter bytes per device)."""
    from flax import nnx

    from kardia_jax.data.tokenizer import read_tokenizer
    from kardia_jax.models import ModelConfig
    from kardia_jax.rewards.judge import RubricJudge

    cfg = ModelConfig.from_pretrained(config_dir, param_dtype=dtype, dtype=dtype)
    graphdef, params = placed_model(cfg.replace(scan_layers=settings.scan_layers), target)
    judge = RubricJudge(
        nnx.merge(graphdef, params),
        read_tokenizer(config_dir, "judge's tokenizer"),
        settings,
        mesh=target.mesh,
        rules=target.rules,
        name=config_dir,
    )
    buckets = judge.config.length_buckets
    bucket = judge.length_bucket(min(length, buckets[-1])) if length else buckets[-1]
    head = list(judge.builder.head_ids)
    out = []
    if settings.mode == "generate":
        out += judge_sampler_programs(judge, rows, len(head) + bucket)
    if settings.mode == "expected" or settings.parse_fallback == "expected":
        # The batch `_load_judge` warms up and every scoring call pads to (in generate
        # mode the parse failures of one call, at most as many).
        batch = judge.warm_batch(rows)
        program, args = judge.scoring_program([head + [judge.pad_id] * bucket], batch=batch)
        lowered = program.lower(judge.graphdef, judge.params, *args)
        compiled = compile_program(lowered, "judge_scoring")
        shapes = f"{batch} candidates x ({len(head)} rubric + {bucket}) tokens"
        if settings.mode == "generate":
            shapes += " (replies it cannot parse)"
        out.append(("judge_scoring", shapes, compiled))
    return out, device_bytes(params)


def judge_sampler_programs(judge, rows: int, longest: int):
    """A generate-mode judge's prefill and decode: its sampler built as
    `rewards.generate` builds it (default prompt and budget buckets, the judge's mesh),
    called as `generate_scores` calls it (up to `batch_bucket(max_batch)` prompts a
    call, one row each, `max_new_tokens`, `temperature`), for prompt prefixes of
    `longest` tokens, within the builder's limit that leaves room for a dimension
    suffix."""
    from flax import nnx

    from kardia_jax.sampling import Sampler, SamplingConfig
    from kardia_jax.sampling.tokens import eos_ids_for

    cfg, builder = judge.config, judge.builder
    sampler = Sampler(
        nnx.merge(judge.graphdef, judge.params),
        eos_ids=eos_ids_for(judge.model_config, judge.tokenizer),
        pad_id=judge.pad_id,
        mesh=judge.mesh,
        rules=judge.rules,
    )
    prompts = min(rows, judge.batch_bucket(cfg.max_batch))
    limit = builder.limits.max_prompt_tokens - max(map(len, builder.suffix_ids))
    return sampler_programs(
        sampler,
        sampler.graphdef,
        sampler.params,
        prompts,
        min(longest, limit),
        int(cfg.max_new_tokens),
        SamplingConfig(temperature=float(cfg.temperature)),
        1,
        "judge",
    )


@contextlib.contextmanager
def judge_folder(reward):
    """The judge's folder: `reward.judge_path`, else for `reward.judge_preset` a
    shape-only one (the preset's config.json beside the built-in Qwen tokenizer), to
    plan a run whose judge checkpoint is not at hand; "" for neither."""
    name = reward.get("judge_preset", "")
    if reward.judge_path or not name:
        yield reward.judge_path
        return
    import shutil
    import tempfile

    from kardia_jax.data.tokenizer import qwen2p5_tokenizer_dir
    from kardia_jax.jsonio import write_json
    from kardia_jax.models import get_preset

    with tempfile.TemporaryDirectory(prefix=f"kardia-judge-{name}-") as folder:
        shutil.copytree(qwen2p5_tokenizer_dir(), folder, dirs_exist_ok=True)
        write_json(os.path.join(folder, "config.json"), get_preset(name).to_hf_config())
        yield folder


def sft_programs(config, target: Target, cfg, tokenizer) -> list[ProgramReport]:
    import jax.numpy as jnp

    from kardia_jax.train.setup import check_batch
    from kardia_jax.train.sft import sft_optimizer
    from kardia_jax.train.state import abstract_train_state, batch_sharding, state_shardings
    from kardia_jax.train.step import jit_train_step, step_options

    mesh, rules = target.mesh, target.rules
    # The schedule's length changes no shape; SFT's optimizer also scales the new
    # tokens' rows, as the driver's does.
    tx = sft_optimizer(config.train, 1000, tokenizer)
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    state = _structs(abstract, shardings)
    bsh = batch_sharding(mesh, rules)
    check_batch(config.train.global_batch, config.train.microbatches, mesh, rules)
    b = int(config.train.global_batch)
    t = max(tuple(config.data.buckets) or (int(config.data.max_length),))
    i32 = jnp.int32
    batch = {k: _struct((b, t), i32, bsh) for k in ("input_ids", "attention_mask", "loss_mask")}
    head_positions = t
    if config.train.gather_targets:
        head_positions = t - 1  # worst case of `target_bucket`: every position a target
        batch["target_index"] = _struct((b, head_positions), i32, bsh)
        batch["target_weight"] = _struct((b, head_positions), i32, bsh)
    step = jit_train_step(graphdef, tx, shardings, bsh, **step_options(config.train))
    compiled = compile_program(step.lower(state, batch), "sft_train_step")
    est = train_flops(cfg, b, t, head_positions) / target.size
    shapes = f"batch {b} x {t} tokens, microbatches {config.train.microbatches}"
    return [_report("sft_train_step", shapes, compiled, est)]


def _structs(abstract, shardings):
    import jax

    return jax.tree.map(lambda x, s: _struct(x.shape, x.dtype, s), abstract, shardings)


def grpo_programs(config, target: Target, cfg, tokenizer) -> list[ProgramReport]:
    """Rollout prefill and decode, the selection's (with `select.every` on), the
    reference / old-policy log-probs, the update and the judge's programs, each with
    what the run keeps on the device beside it."""
    import jax.numpy as jnp
    from flax import nnx

    from kardia_jax.data.pipeline import bucket_length
    from kardia_jax.rewards.judge import judge_config_from_section
    from kardia_jax.rl import rollout
    from kardia_jax.rl.config import minibatch_rows, step_batch
    from kardia_jax.rl.grpo import prompt_buckets
    from kardia_jax.rl.step import GRPOLoss, check_microbatches, jit_grpo_update, jit_log_probs
    from kardia_jax.sampling import Sampler, SamplingConfig
    from kardia_jax.sharding import batch_shards
    from kardia_jax.train.optim import make_optimizer
    from kardia_jax.train.state import abstract_train_state, batch_sharding, state_shardings
    from kardia_jax.train.step import step_options

    mesh, rules = target.mesh, target.rules
    rc, n_dev = config.rollout, target.size
    tx = make_optimizer(config.train, 1000)  # the schedule's length changes no shape
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    state = _structs(abstract, shardings)
    bsh, vsh = batch_sharding(mesh, rules), batch_sharding(mesh, rules, ndim=1)
    # The GRPO driver's own checks: rollout.global_batch completions per step.
    mb_rows = minibatch_rows(config, batch_shards(mesh, rules))
    check_microbatches(mb_rows, int(config.train.microbatches))
    prompts, rows = step_batch(rc)
    buckets = prompt_buckets(config)
    # The driver pads prompts to a bucket: the one a data.max_length prompt lands in.
    length = bucket_length(int(config.data.max_length), buckets)
    n = int(rc.max_new_tokens)
    t = length + n
    loss = GRPOLoss.from_config(config)

    params_bytes = device_bytes(state.params)
    state_bytes = device_bytes(state)
    ref_bytes = params_bytes if loss.beta > 0 else 0
    rw = config.reward
    # The driver loads its judge when the rubric counts and no custom reward replaces it.
    judge, judge_bytes = [], 0
    with judge_folder(rw) as judge_dir:
        if judge_dir and rw.rubric and not rw.get("fn", ""):
            judge, judge_bytes = judge_programs(
                judge_dir,
                judge_config_from_section(rw.get("judge", {}), "reward.judge"),
                rw.judge_dtype,
                target,
                rows,
                int(1.5 * (max(buckets) + n)),  # the longest bucket `_load_judge` warms up
            )

    # The sampler decodes the train state's own parameters; with unroll_layers a
    # scanned policy is decoded from an unrolled copy that lives all run long.
    unrolled = bool(rc.unroll_layers) and cfg.scan_layers
    s_graphdef, s_params = graphdef, state.params
    if unrolled:
        s_graphdef, s_params = placed_model(cfg.replace(scan_layers=False), target)
    copy_bytes = device_bytes(s_params) if unrolled else 0
    sampler = Sampler(
        nnx.merge(s_graphdef, s_params),
        eos_ids=rollout.stop_token_ids(tokenizer),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        mesh=mesh,
        rules=rules,
        prompt_buckets=buckets,
    )
    sampling = SamplingConfig(temperature=rc.temperature, top_k=rc.top_k, top_p=rc.top_p)
    beside = state_bytes + ref_bytes + judge_bytes + copy_bytes  # all run long
    programs = sampler_programs(
        sampler, s_graphdef, s_params, prompts, length, n, sampling, rc.group_size, "rollout"
    )
    sel = config.get("select")
    if sel is not None and int(sel.every):
        # Best-checkpoint selection (`Selector.score`, as `grpo._selector` builds it):
        # the rollouts' sampler answers held-out prompts, a batch of the rollouts' row
        # count a call (fewer when select.prompts is smaller; the held-out count is
        # unknown here, so this is the largest), one row each, at its own budget.
        programs += sampler_programs(
            sampler,
            s_graphdef,
            s_params,
            min(int(sel.prompts), rows),
            length,
            int(sel.max_new_tokens) or n,
            SamplingConfig(temperature=float(sel.temperature)),
            1,
            "select",
        )
    out = []
    resident = beside - device_bytes(s_params)
    for name, shapes, compiled in programs:
        out.append(_report(name, shapes + _beside(resident), compiled, None, resident))

    logp = jit_log_probs(loss, n, params_shardings=shardings.params, bsh=bsh)
    ids = _struct((rows, t), jnp.int32, bsh)
    compiled = compile_program(logp.lower(graphdef, state.params, ids, ids), LOG_PROBS)
    est = train_flops(cfg, rows, t, n) / 3 / n_dev  # forward only
    resident = beside - params_bytes  # one set of parameters is its argument
    shapes = f"{rows} rollouts x {t} tokens" + _beside(resident)
    out.append(_report(LOG_PROBS, shapes, compiled, est, resident))

    f32, i32 = jnp.float32, jnp.int32
    batch = {
        "input_ids": _struct((mb_rows, t), i32, bsh),
        "attention_mask": _struct((mb_rows, t), i32, bsh),
        "completion_mask": _struct((mb_rows, n), i32, bsh),
        "old_logp": _struct((mb_rows, n), f32, bsh),
        "ref_logp": _struct((mb_rows, n), f32, bsh),
        "advantages": _struct((mb_rows,), f32, vsh),
    }
    step = jit_grpo_update(graphdef, tx, loss, shardings, bsh, vsh, **step_options(config.train))
    compiled = compile_program(step.lower(state, batch), "grpo_update_step")
    est = train_flops(cfg, mb_rows, t, n) / n_dev
    resident = beside - state_bytes
    shapes = (
        f"{mb_rows} rollouts x ({length} prompt + {n} completion) tokens, "
        f"microbatches {config.train.microbatches}" + _beside(resident)
    )
    out.append(_report("grpo_update_step", shapes, compiled, est, resident))

    resident = beside - judge_bytes
    for name, shapes, compiled in judge:
        out.append(_report(name, shapes + _beside(resident), compiled, None, resident))
    return out


def _beside(resident: int) -> str:
    return f"; + {resident / GIB:.3f} GiB resident beside it" if resident else ""


def eval_programs(config, target: Target, cfg, tokenizer) -> list[ProgramReport]:
    """Generation (prefill + decode) and the judge's programs. The driver frees the
    policy before it loads the judge: nothing else stays resident."""
    from flax import nnx

    from kardia_jax.eval.config import judge_settings
    from kardia_jax.rewards.api_judge import is_api_spec
    from kardia_jax.sampling import Sampler, SamplingConfig
    from kardia_jax.sampling.tokens import eos_ids_for

    e = config.eval
    graphdef, params = placed_model(cfg, target)
    sampler = Sampler(
        nnx.merge(graphdef, params),
        eos_ids=eos_ids_for(cfg, tokenizer),
        pad_id=tokenizer.pad_token_id or 0,
        mesh=target.mesh,
        rules=target.rules,
    )
    sampling = SamplingConfig(
        temperature=float(e.temperature), top_k=int(e.top_k), top_p=float(e.top_p)
    )
    programs = sampler_programs(
        sampler,
        graphdef,
        params,
        int(e.batch_size),
        int(config.data.max_length),
        int(e.max_new_tokens),
        sampling,
        1,
        "eval",
    )
    out = [_report(name, shapes, compiled) for name, shapes, compiled in programs]
    path = config.judge.path
    if path and not is_api_spec(path):
        settings = judge_settings(config.judge)
        rows = min(int(config.judge.batch_size), int(settings.max_batch))
        judge, _ = judge_programs(path, settings, config.judge.dtype, target, rows, None)
        out += [_report(name, shapes, compiled) for name, shapes, compiled in judge]
    return out


def run_kind(config) -> str:
    if "rollout" in config:
        return "grpo"
    return "sft" if "train" in config else "eval"


def compile_check(config, devices=None) -> dict:
    """Compiles every program of the config's run for the mesh of `devices` (default:
    jax.devices()) and returns {"mesh", "model", "kernels", "programs": [...]}."""
    import jax

    # Programs for compile-only devices (a TPU topology) cannot be read back from the
    # persistent compilation cache (there is no client to load them into): writing
    # them there only makes a later read warn and compile again. (jax decides once per
    # process, at its first compile: this holds for the CLI, not inside a process
    # that compiled before.)
    compile_only = devices is not None and {d.platform for d in devices} != {
        d.platform for d in jax.devices()
    }
    cached = jax.config.jax_enable_compilation_cache
    if compile_only:
        jax.config.update("jax_enable_compilation_cache", False)
    try:
        return _compile_check(config, devices)
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)


def _compile_check(config, devices):
    import jax

    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.models import ModelConfig
    from kardia_jax.train.setup import planned_model_config

    kind = run_kind(config)
    m = config.model
    if kind == "grpo" and not (m.path or m.preset or dict(m.init)):
        raise ConfigError(
            "model.path: a GRPO config compiles against its policy's shape; pass the SFT "
            "export (--config.model.path=DIR; only its config.json is read) or "
            "--config.model.preset=NAME"
        )
    if kind == "eval" and not m.path:
        raise ConfigError(
            "model.path: an eval config compiles against its policy's shape; pass its "
            "checkpoint dir (--config.model.path=DIR; only config.json and the tokenizer "
            "are read)"
        )
    mesh, rules = _mesh(config, devices)
    devs = list(devices if devices is not None else jax.devices())
    target = Target(mesh, rules, list(mesh.devices.flat) if mesh is not None else devs[:1])
    if kind == "eval":
        from kardia_jax.eval.run import load_eval_tokenizer

        tokenizer = load_eval_tokenizer(config, m.path)
        cfg = ModelConfig.from_pretrained(m.path, param_dtype=m.param_dtype, dtype=m.compute_dtype)
    else:
        tokenizer = load_tokenizer(config.data.tokenizer or None)
        cfg = planned_model_config(m, len(tokenizer))
    cfg = for_target(cfg, target)
    build = {"sft": sft_programs, "grpo": grpo_programs, "eval": eval_programs}[kind]
    programs = build(config, target, cfg, tokenizer)
    first = target.devices[0]
    return {
        "run": kind,
        "mesh": dict(mesh.shape) if mesh is not None else {"single_device": 1},
        "platform": first.platform,
        "device_kind": first.device_kind,
        "kernels": cfg.kernels,
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


# ------------------------------------------------------------------- reporting


def check_budget(programs: list[ProgramReport], budget_gib: float | None, source: str) -> None:
    if not budget_gib or budget_gib <= 0:
        return
    over = [p for p in programs if p.needed_bytes > budget_gib * GIB]
    if over:
        p = max(over, key=lambda p: p.needed_bytes)
        compiler = (
            f"; the compiler's own peak {p.compiler_peak_bytes / GIB:.3f} GiB"
            if p.compiler_peak_bytes
            else ""
        )
        raise MemoryBudgetExceeded(
            f"{p.name} needs {p.needed_bytes / GIB:.3f} GiB per device (arguments "
            f"{p.argument_bytes / GIB:.3f} + outputs {p.output_bytes / GIB:.3f} - donated "
            f"{p.alias_bytes / GIB:.3f} + temporaries {p.temp_bytes / GIB:.3f} + other resident "
            f"{p.resident_bytes / GIB:.3f} GiB{compiler}), over the "
            f"budget of {budget_gib:g} GiB per device ({source}). Try more devices, "
            "sharding=fsdp, model.remat=full, train.microbatches or a shorter data.buckets"
        )


def format_report(result: dict) -> str:
    where = f"on {result['platform']} ({result['device_kind']})"
    if result.get("slice"):
        where = f"on {result['slice']}"
    lines = [
        f"{result['run']} run, mesh {result['mesh']} {where}, {result['kernels']} kernels; "
        f"model {result['model']['params'] / 1e6:.1f}M params, "
        f"{result['model']['param_dtype']} params, {result['model']['compute_dtype']} "
        f"compute, remat {result['model']['remat']}",
        f"{'program':<42} {'args':>9} {'outputs':>9} {'donated':>9} {'temps':>9} "
        f"{'resident':>9} {'peak':>9} {'TFLOPs':>9}",
    ]
    for p in result["programs"]:
        g = [
            x / GIB
            for x in (
                p.argument_bytes,
                p.output_bytes,
                p.alias_bytes,
                p.temp_bytes,
                p.resident_bytes,
                p.peak_bytes,
            )
        ]
        lines.append(
            f"{p.name:<42} " + " ".join(f"{x:8.3f}G" for x in g) + f" {p.flops / 1e12:9.4f}"
        )
        lines.append(f"  {p.shapes}; per device" + _estimate(p))
        if p.compiler_peak_bytes:
            lines.append(
                f"  the compiler's own peak of live buffers: {p.compiler_peak_bytes / GIB:.3f}G"
                + (f" (+ {p.resident_bytes / GIB:.3f}G resident)" if p.resident_bytes else "")
            )
        if p.custom_calls:
            calls = ", ".join(f"{k} x{v}" for k, v in p.custom_calls.items())
            lines.append(f"  custom calls: {calls}")
    return "\n".join(lines)


def as_json(result: dict) -> str:
    return json.dumps({**result, "programs": [p.as_dict() for p in result["programs"]]}, indent=2)


def _estimate(p: ProgramReport) -> str:
    if not p.estimate_flops:
        return ""
    return (
        f"; estimate (6N + attention) {p.estimate_flops / 1e12:.4f} TFLOPs "
        "(the compiler counts each loop body once)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/*.py file (SFT, GRPO or eval)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--devices", type=int, help="compile for N fake CPU devices")
    target.add_argument(
        "--topology", help=f"compile for a TPU slice (needs libtpu): {TOPOLOGY_FORMS}"
    )
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        help="fail if a program needs more GiB per device (default: compile_check.budget_gib "
        "of the config, else the chip's HBM with --topology, else the device's own memory "
        "when it reports one)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args) -> int:
    if args.devices is not None:
        if args.devices < 1:
            raise ConfigError(f"--devices {args.devices}: expected a positive count")
        force_cpu_devices(args.devices)
    from kardia_jax.config_files import load_config

    tpu = parse_topology(args.topology) if args.topology else None
    config = load_config(args.config, args.config_overrides)
    devices = topology_devices(args.topology) if tpu else None
    result = compile_check(config, devices)
    budget, source = args.budget_gib, "--budget-gib"
    if budget is None and "compile_check" in config:
        budget, source = config.compile_check.get("budget_gib"), "compile_check.budget_gib"
    if tpu is not None:
        result["slice"] = tpu.describe()
        if budget is None:
            # Compile-only v4 devices are TensorCores: each gets half the chip's HBM. A
            # config may ask for headroom (`compile_check.hbm_fraction`, e.g. 0.9).
            fraction = float(config.get("compile_check", {}).get("hbm_fraction", 1.0))
            budget = tpu.hbm_gib / devices_per_chip(devices) * fraction
            source = f"{tpu.generation} HBM per device"
            if fraction != 1.0:
                source = f"{fraction:.0%} of {source} (compile_check.hbm_fraction)"
    elif budget is None and devices is None:
        budget, source = _device_memory_gib()
    result["budget_gib"], result["budget_source"] = budget, source if budget else ""
    print(as_json(result) if args.json else format_report(result))
    check_budget(result["programs"], budget, source)
    if budget and not args.json:
        peak = max(p.needed_bytes for p in result["programs"]) / GIB
        print(f"fits: needs {peak:.3f} GiB per device <= budget {budget:g} GiB ({source})")
    return 0


def _device_memory_gib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] / GIB, f"{jax.devices()[0].device_kind} memory"
    return None, ""
