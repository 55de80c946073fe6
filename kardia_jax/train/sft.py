"""Cold-start SFT (the paper's first stage): full-parameter training on the easy
split in the four-span format, with held-out loss, periodic orbax checkpoints, exact
resume, preemption handling and a Hugging Face export of the final policy."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from kardia_jax.checks import writable_dir
from kardia_jax.data.examples import build_examples
from kardia_jax.data.pipeline import build_sft_dataset, check_buckets, sft_steps_per_epoch
from kardia_jax.data.reader import sample_path
from kardia_jax.data.splits import profile_split, stage_split
from kardia_jax.data.tokenizer import load_tokenizer, span_marker_ids
from kardia_jax.data.validate import data_record, load_dialogues, write_data_record
from kardia_jax.errors import DataError, TrainingHalted
from kardia_jax.host import HeapGuard
from kardia_jax.jsonio import append_jsonl, resume_jsonl
from kardia_jax.models import ModelConfig, check_hf_checkpoint, save_hf_model
from kardia_jax.models.decoder import Transformer
from kardia_jax.train.checkpoints import resume_or_init
from kardia_jax.train.distributed import agreed, global_batch, host_rows
from kardia_jax.train.metrics import MetricsLogger, flops_per_token
from kardia_jax.train.optim import learning_rate_schedule, make_optimizer
from kardia_jax.train.preemption import Preempted, Preemption
from kardia_jax.train.setup import check_batch, mesh_and_rules, planned_model_config
from kardia_jax.train.state import (
    batch_sharding,
)
from kardia_jax.train.step import (
    jit_eval_step,
    jit_train_step,
    step_options,
    target_bucket,
    with_target_index,
)


def sft_optimizer(train: ConfigDict, total_steps: int, tokenizer):
    """The SFT optimizer, for the driver and compile-check alike. The span markers are
    the last tokens added to the tokenizer: their rows (and the padding rows after
    them) are the ones `train.new_token_lr_scale` speeds up."""
    first_new_row = min(span_marker_ids(tokenizer).values())
    return make_optimizer(train, total_steps, first_new_row=first_new_row)


def load_sft_data(dcfg: ConfigDict, tokenizer):
    """(train examples, held-out examples, report): the easy part of the train split,
    profile-disjoint held-out, in the `data.example` form (turn or dialogue)."""
    path = dcfg.path or str(sample_path("train"))
    dialogues, report = load_dialogues(path, mode=dcfg.mode, split="train")
    easy = stage_split(dialogues, "sft")
    if dcfg.heldout_fraction > 0:
        train, held = profile_split(easy, dcfg.heldout_fraction, seed=dcfg.seed)
    else:
        train, held = easy, []
    kw = dict(max_length=dcfg.max_length, report=report, form=dcfg.example)
    return build_examples(train, tokenizer, **kw), build_examples(held, tokenizer, **kw), report


@dataclasses.dataclass
class SFTInputs:
    """Everything a run needs before its first step, each piece checked."""

    mesh: Mesh
    rules: tuple
    tokenizer: Any
    train_examples: list
    held_examples: list
    report: Any
    model_config: ModelConfig


def prepare_sft(config: ConfigDict, workdir: str) -> SFTInputs:
    """The run's preflight: the workdir, mesh and batch, the tokenizer, the data, and
    the checkpoint's config and tensor headers (not its weights). Raises a
    `KardiaError` naming the setting or file; takes seconds, compiles nothing."""
    writable_dir(workdir, "workdir")
    tcfg = config.train
    mesh, rules = mesh_and_rules(config)
    check_batch(tcfg.global_batch, tcfg.microbatches, mesh, rules)
    tokenizer = load_tokenizer(config.data.tokenizer or None)
    train_examples, held_examples, report = load_sft_data(config.data, tokenizer)
    if not train_examples:
        raise DataError(f"data.path={config.data.path!r}: no SFT examples after filtering")
    check_buckets(
        [len(e) for e in train_examples + held_examples], config.data.buckets, "SFT examples"
    )
    if config.model.path:
        check_hf_checkpoint(config.model.path)
    cfg = planned_model_config(config.model, len(tokenizer))
    return SFTInputs(mesh, rules, tokenizer, train_examples, held_examples, report, cfg)


def run_sft(config: ConfigDict, workdir: str, inputs: SFTInputs | None = None) -> dict:
    """Trains; `inputs` is `prepare_sft`'s result when the caller already has it."""
    inputs = inputs or prepare_sft(config, workdir)
    write_data_record(  # what was read, train and held out (process 0)
        workdir,
        data_record(
            inputs.report, {"train": inputs.train_examples, "held_out": inputs.held_examples}
        ),
    )
    tcfg = config.train
    mesh, rules, tokenizer = inputs.mesh, inputs.rules, inputs.tokenizer
    train_examples, held_examples = inputs.train_examples, inputs.held_examples
    report, cfg = inputs.report, inputs.model_config
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    per_epoch = sft_steps_per_epoch(  # packed: an epoch is fewer, fuller batches
        train_examples,
        global_batch=tcfg.global_batch,
        shard_count=jax.process_count(),
        pack=config.data.pack,
        seed=config.data.seed,
        buckets=tuple(config.data.buckets) or None,
    )
    total_steps = int(tcfg.steps) if tcfg.steps > 0 else int(tcfg.epochs * per_epoch)
    tx = sft_optimizer(tcfg, total_steps, tokenizer)
    lr_fn = learning_rate_schedule(tcfg, total_steps)
    main = jax.process_index() == 0

    ckpt, graphdef, state, shardings, start, data_state = resume_or_init(
        config, cfg, tx, mesh, rules, workdir
    )

    # Every host draws the same global batch and keeps its own rows: the batch
    # stream, padding and shapes are then independent of the number of hosts (a pod
    # run reproduces a one-host run), with no per-step agreement collective.
    dataset = build_sft_dataset(
        train_examples,
        batch_size=tcfg.global_batch,
        seed=config.data.seed,
        shard_index=0,
        shard_count=1,
        buckets=tuple(config.data.buckets) or None,
        pad_id=pad_id,
        pack=config.data.pack,
    )
    it = iter(dataset)
    if data_state:
        it.set_state(data_state)

    bsh = batch_sharding(mesh, rules)
    step_fn = jit_train_step(graphdef, tx, shardings, bsh, **step_options(tcfg))
    eval_fn = jit_eval_step(graphdef)

    log_path = os.path.join(workdir, "train_log.jsonl")
    eval_log_path = os.path.join(workdir, "eval_log.jsonl")  # held-out loss: {step, loss}
    with agreed():  # a log corrupt before its last line stops every process, not one
        if main:
            resume_jsonl(log_path, start)
            resume_jsonl(eval_log_path, start)
    logger = MetricsLogger(os.path.join(workdir, "tb"), total_steps, enabled=main)
    # A SIGTERM to any process: every one saves at the same step and exits 0.
    preempt = Preemption().install()
    pending: list[tuple[int, dict, int, float]] = []  # device metrics not yet fetched
    last = {"loss": float("nan")}
    t_last = time.perf_counter()

    def flush():
        nonlocal t_last
        if not pending:
            return
        fetched = jax.device_get([m for _, m, _, _ in pending])
        now = time.perf_counter()
        dt = (now - t_last) / len(pending)
        t_last = now
        rows = []
        for (step, _, seq_len, _), m in zip(pending, fetched, strict=True):
            rows.append(
                {
                    "step": step,
                    "loss": float(m["loss"]),
                    "grad_norm": float(m["grad_norm"]),
                    "lr": float(lr_fn(step - 1)),
                    "tokens": int(m["tokens"]),
                    "skipped": int(m["skipped"]),
                    "seq_len": seq_len,
                }
            )
        if main:
            append_jsonl(log_path, rows)
            r = rows[-1]
            seq_tokens = tcfg.global_batch * r["seq_len"]
            tps = seq_tokens / dt
            mfu = (
                tps
                * flops_per_token(cfg, r["seq_len"])
                / (float(config.log.peak_tflops) * 1e12 * jax.device_count())
            )
            logger.scalars(
                r["step"],
                {
                    "loss": r["loss"],
                    "learning_rate": r["lr"],
                    "grad_norm": r["grad_norm"],
                    "tokens_per_s": tps,
                    "step_time_s": dt,
                    "mfu": mfu,
                    "skipped_updates": sum(x["skipped"] for x in rows),
                },
            )
            logger.progress(r["step"], {"loss": r["loss"], "lr": r["lr"], "tok/s": tps})
        last.update(rows[-1])
        pending.clear()

    def save(step, wait=False):
        flush()
        ckpt.save(step, state, it.get_state(), wait=wait)

    def evaluate(step):
        if not held_examples:
            return None
        held = build_sft_dataset(
            held_examples,
            batch_size=tcfg.global_batch,
            shuffle=False,
            num_epochs=1,
            shard_index=0,
            shard_count=1,
            buckets=tuple(config.data.buckets) or None,
            pad_id=pad_id,
        )
        nll = tokens = 0.0
        for batch in held:
            out = eval_fn(state.params, _prepare(batch, bsh, tcfg.gather_targets))
            nll, tokens = nll + out["nll"], tokens + out["tokens"]
        loss = float(nll) / max(float(tokens), 1.0)
        logger.scalars(step, {"loss": loss}, prefix="eval")
        if main:
            append_jsonl(eval_log_path, {"step": step, "loss": loss})
            print(f"step {step}: held-out loss {loss:.4f}", flush=True)
        return loss

    eval_loss = None
    step = start
    heap_guard = HeapGuard()  # kept host memory, bounded (kardia_jax/host.py)
    try:
        while step < total_steps:
            batch = next(it)
            heap_guard(shape=batch["input_ids"].shape)
            state, metrics = step_fn(state, _prepare(batch, bsh, tcfg.gather_targets))
            step += 1
            pending.append((step, metrics, batch["input_ids"].shape[1], 0.0))
            if step % config.log.every == 0 or step == total_steps:
                flush()
                if int(jax.device_get(state.nonfinite_streak)) >= tcfg.max_nonfinite:
                    raise TrainingHalted(
                        f"{tcfg.max_nonfinite} non-finite updates in a row at step {step} "
                        f"(train.max_nonfinite); the last checkpoint "
                        f"({ckpt.steps()[-1] if ckpt.steps() else 'none'}) is intact"
                    )
            if config.eval.every and step % config.eval.every == 0:
                eval_loss = evaluate(step)
            if preempt.reached():
                save(step, wait=True)
                raise Preempted("sft", step)
            if config.checkpoint.every and step % config.checkpoint.every == 0:
                save(step)
        flush()
        if not ckpt.steps() or ckpt.steps()[-1] != step:
            save(step)
        ckpt.wait()
        eval_loss = evaluate(step)  # always once at the end
        if config.export_hf:
            model = _merge(graphdef, state)
            save_hf_model(model, os.path.join(workdir, "hf"), tokenizer=tokenizer)
        return {
            "step": step,
            "loss": last["loss"],
            "eval_loss": eval_loss,
            "skipped_updates": int(jax.device_get(state.nonfinite_total)),
            "examples": len(train_examples),
            "data_report": report.summary() if hasattr(report, "summary") else None,
        }
    finally:
        preempt.restore()
        logger.close()
        ckpt.close()


def _prepare(batch: dict, sharding, gather_targets: bool) -> dict:
    """Global host batch -> target positions listed -> this host's rows -> device arrays."""
    if gather_targets:
        batch = with_target_index(batch, target_bucket(batch))
    return global_batch(host_rows(batch), sharding)


def _merge(graphdef, state) -> Transformer:
    from flax import nnx

    return nnx.merge(graphdef, state.params)
