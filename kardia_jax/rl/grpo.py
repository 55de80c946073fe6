"""Rubric-ERL's second stage: GRPO on the hard split from the SFT policy. Each step
samples G completions per prompt with our sampler, scores them (format, emotion,
rubric judge on the same mesh), normalises rewards within groups, and takes `mu`
passes of clipped-surrogate updates with a KL penalty to the frozen reference. Every
`select.every` steps the policy answers held-out prompts and the best step is kept
(kardia_jax/rl/select.py): WORKDIR/hf is the best step's policy, WORKDIR/last/hf the
last's."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from kardia_jax.checks import writable_dir
from kardia_jax.compiles import CompileCounter
from kardia_jax.data.examples import build_examples
from kardia_jax.data.pipeline import bucket_length, build_prompt_dataset, check_buckets
from kardia_jax.data.reader import sample_path
from kardia_jax.data.splits import stage_split
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.data.validate import data_record, load_dialogues, write_data_record
from kardia_jax.errors import ConfigError, DataError, TrainingHalted
from kardia_jax.host import HeapGuard
from kardia_jax.jsonio import append_jsonl, resume_jsonl
from kardia_jax.models import (
    ModelConfig,
    check_hf_checkpoint,
    load_hf_model,
    resize_token_embeddings,
    save_hf_model,
)
from kardia_jax.rewards import JudgeConfig, KardiaReward, RewardWeights, RubricJudge
from kardia_jax.rewards.judge import judge_config_from_section
from kardia_jax.rewards.prompt import JudgeContext
from kardia_jax.rl import rollout
from kardia_jax.rl.config import minibatch_rows, old_logp_source, step_batch
from kardia_jax.rl.core import AGG_MODES, KL_ESTIMATORS, SCALES
from kardia_jax.rl.metrics import step_metrics, write_ledger
from kardia_jax.rl.select import (
    SELECTION_LOG,
    Selector,
    check_select,
    final_exports,
    heldout_split,
    scoring_interval,
)
from kardia_jax.rl.step import (
    VECTOR_KEYS,
    GRPOLoss,
    check_microbatches,
    jit_grpo_update,
    jit_log_probs,
    shared_prompt_fallback,
)
from kardia_jax.sampling import Sampler, SamplingConfig
from kardia_jax.sampling.sampler import PROMPT_BUCKETS
from kardia_jax.sharding import batch_shards, fetch
from kardia_jax.train.checkpoints import resume_or_init
from kardia_jax.train.distributed import agreed, global_batch, host_rows
from kardia_jax.train.metrics import MetricsLogger
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.preemption import Preempted, Preemption
from kardia_jax.train.setup import mesh_and_rules, planned_model_config
from kardia_jax.train.state import (
    batch_sharding,
)
from kardia_jax.train.step import step_options


def load_grpo_data(dcfg: ConfigDict, tokenizer, select: ConfigDict | None = None):
    """(prompts trained on, held-out prompts, what was read): turn-level examples
    (their targets give the gold emotion) of the hard dialogues of the train split;
    with selection on (`select.every`), the dialogues of a profile-disjoint slice are
    held out for it."""
    path = dcfg.path or str(sample_path("train"))
    dialogues, report = load_dialogues(path, mode=dcfg.mode, split="train")
    hard = stage_split(dialogues, "grpo")
    train, held = hard, []
    if select is not None and select.every:
        train, held = heldout_split(hard, float(select.heldout_fraction), int(dcfg.seed), path)
    kw = dict(max_length=dcfg.max_length, report=report)
    train, held = build_examples(train, tokenizer, **kw), build_examples(held, tokenizer, **kw)
    return train, held, data_record(report, {"train": train, "held_out": held})


def load_grpo_prompts(dcfg: ConfigDict, tokenizer):
    """Turn-level examples of the hard dialogues of the train split, none held out."""
    return load_grpo_data(dcfg, tokenizer)[0]


@dataclasses.dataclass
class GRPOInputs:
    """Everything a run needs before its first step, each piece checked."""

    mesh: Mesh
    rules: tuple
    tokenizer: Any
    examples: list  # the prompts trained on
    heldout: list  # the prompts best-checkpoint selection scores (empty when it is off)
    data: dict  # what was read, for WORKDIR/data.json
    model_config: ModelConfig


def prepare_grpo(
    config: ConfigDict, workdir: str, *, tokenizer=None, model_config=None
) -> GRPOInputs:
    """The run's preflight: settings, workdir, mesh and batch split, tokenizer,
    prompts, the policy's, reference's and judge's configs and tensor headers (not
    their weights), and judge prompts rendered through its chat template. Raises a
    `KardiaError` naming the setting or file; takes seconds, compiles nothing.

    A pipeline checks GRPO before SFT has written the policy: it passes the
    `tokenizer` and `model_config` that SFT will export, and `model.path` is not read.
    """
    upstream = model_config is not None
    if not config.model.path and not upstream:
        raise ConfigError("model.path: GRPO starts from a policy checkpoint (the SFT export)")
    _check_settings(config)
    writable_dir(workdir, "workdir")
    g = config.grpo
    mesh, rules = mesh_and_rules(config)
    check_microbatches(
        minibatch_rows(config, batch_shards(mesh, rules)), int(config.train.microbatches)
    )
    if tokenizer is None:
        tokenizer = load_tokenizer(config.data.tokenizer or None)
    examples, heldout, data = load_grpo_data(config.data, tokenizer, config.select)
    if not examples:
        raise DataError(f"data.path={config.data.path!r}: no GRPO prompts after filtering")
    if config.select.every and not heldout:
        raise DataError(
            f"data.path={config.data.path!r}: no held-out prompts for select.heldout_fraction="
            f"{config.select.heldout_fraction} after filtering (or select.every=0: no selection)"
        )
    check_buckets(
        [e.prompt_length for e in examples + heldout], config.data.buckets, "GRPO prompts"
    )
    rollout.stop_token_ids(tokenizer)
    if not upstream:
        check_hf_checkpoint(config.model.path)
        model_config = planned_model_config(config.model, len(tokenizer))
    if g.beta > 0 and g.reference_path:
        check_hf_checkpoint(g.reference_path)
    if _uses_judge(config.reward):
        RubricJudge.check(
            config.reward.judge_path,
            _judge_settings(config.reward),
            dtype=config.reward.judge_dtype,
            contexts=(JudgeContext.from_example(e) for e in examples + heldout),
        )
    return GRPOInputs(mesh, rules, tokenizer, examples, heldout, data, model_config)


@dataclasses.dataclass
class GRPORun:
    """What the phases of a run share: settings, models, compiled programs, logs. The
    train state is replaced by every update."""

    config: ConfigDict
    workdir: str
    examples: list
    tokenizer: Any
    graphdef: Any
    state: Any
    ckpt: Any
    ref: tuple | None  # (graphdef, params) of the frozen reference; None when beta = 0
    judge: rollout.TimedJudge | None
    reward_fn: Any
    sampler: Sampler
    sampling: SamplingConfig
    batches: Any  # the prompt batches' iterator (its state is checkpointed)
    logp_fn: Any
    step_fn: Any
    bsh: Any
    vsh: Any
    buckets: tuple[int, ...]
    pad_id: int
    stop_ids: tuple[int, ...]
    logger: MetricsLogger
    start: int
    total_steps: int
    per_epoch: int
    compiles: CompileCounter

    @property
    def main(self) -> bool:
        return jax.process_index() == 0

    def export(self, path) -> None:
        """The current policy as a HF checkpoint: every host takes part in the gathers;
        process 0 writes."""
        save_hf_model(nnx.merge(self.graphdef, self.state.params), path, tokenizer=self.tokenizer)


@dataclasses.dataclass
class Collected:
    """One step's rollouts: the groups kept for the update, and every round sampled."""

    rollouts: rollout.Rollouts
    parts: list  # rollout.Rollouts of each round, refills included
    sample_seconds: float
    score_seconds: float


def run_grpo(config: ConfigDict, workdir: str, inputs: GRPOInputs | None = None) -> dict:
    """Trains; `inputs` is `prepare_grpo`'s result when the caller already has it. Each
    step: collect (sample), score, update, log."""
    inputs = inputs or prepare_grpo(config, workdir)
    run = start_run(config, workdir, inputs)
    step = run.start
    heap_guard = HeapGuard()  # kept host memory, bounded (kardia_jax/host.py)
    selector = None
    every = scoring_interval(config.select, run.per_epoch)
    # A SIGTERM to any process: every one saves at the same step and exits 0.
    preempt = Preemption().install()
    try:
        if every:
            selector = _selector(run, inputs.heldout)
            if run.start == 0:
                _select(selector, 0, run.export, run.logger)  # the starting policy: the baseline
        while step < run.total_steps:
            heap_guard()
            t0 = time.perf_counter()
            built = run.compiles.count
            if run.judge is not None:
                run.judge.reset()
            seed = rollout_seed(int(config.seed), step)  # rollouts are a function of the step
            got = collect(run, step)
            adv, host, old_logp, ref_logp, times = prepare_update(run, got.rollouts)
            t = time.perf_counter()
            metrics = update(run, host, old_logp, ref_logp, seed)
            times["update"] = time.perf_counter() - t
            step += 1
            row = step_row(run, step, got, adv, host, metrics, times, t0)
            # XLA programs built during this step: 0 after the first step of a bucket
            # (dynamic sampling and refills must not change any compiled shape).
            row["compiles"] = run.compiles.count - built
            row["prompt_batches"] = len(got.parts)
            row["updates"] = len(metrics)  # optimizer steps: mu x minibatches
            log_step(run, step, row, got.rollouts, adv)
            _check_halted(run, step)
            # Scored before the checkpoint: a run resumed from this step's checkpoint
            # finds this step in the history.
            if selector is not None and (step % every == 0 or step == run.total_steps):
                _select(selector, step, run.export, run.logger)
            if preempt.reached():
                run.ckpt.save(step, run.state, run.batches.get_state(), wait=True)
                raise Preempted("grpo", step)
            if config.checkpoint.every and step % config.checkpoint.every == 0:
                run.ckpt.save(step, run.state, run.batches.get_state())
        return _finish(run, step, selector)
    finally:
        preempt.restore()
        run.logger.close()
        run.ckpt.close()


def start_run(config: ConfigDict, workdir: str, inputs: GRPOInputs) -> GRPORun:
    """Loads the policy (or resumes it), the reference and the judge, builds the
    sampler, the prompt stream and the compiled programs, and opens the logs."""
    rc, g = config.rollout, config.grpo
    mesh, rules, tokenizer = inputs.mesh, inputs.rules, inputs.tokenizer
    examples, cfg = inputs.examples, inputs.model_config
    prompts_per_step, rows = step_batch(rc)
    per_epoch = math.ceil(len(examples) / prompts_per_step)
    total_steps = int(config.train.steps) or int(config.train.epochs * per_epoch)
    tx = make_optimizer(config.train, total_steps * g.mu * g.minibatches)
    loss = GRPOLoss.from_config(config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop_ids = rollout.stop_token_ids(tokenizer)
    buckets = prompt_buckets(config)

    ckpt, graphdef, state, shardings, start, data_state = resume_or_init(
        config, cfg, tx, mesh, rules, workdir
    )
    ref = _load_reference(config, cfg, mesh, rules)
    judge = _load_judge(config, mesh, rules, rows, max(buckets) + rc.max_new_tokens)
    reward_fn = _reward_fn(config.reward, judge)

    # Prompts are bucketed like the update batch, so the sampler and the step compile
    # at most one program per bucket between them.
    sampler = Sampler(
        nnx.merge(graphdef, state.params),
        eos_ids=stop_ids,
        pad_id=pad_id,
        mesh=mesh,
        rules=rules,
        prompt_buckets=buckets,
        unroll_layers=rc.unroll_layers,
    )
    dataset = build_prompt_dataset(
        examples,
        batch_size=prompts_per_step,
        seed=config.data.seed,
        shard_index=0,
        shard_count=1,
        buckets=buckets,
        pad_id=pad_id,
    )
    batches = iter(dataset)
    if data_state:
        batches.set_state(data_state)

    bsh, vsh = batch_sharding(mesh, rules), batch_sharding(mesh, rules, ndim=1)
    main = jax.process_index() == 0
    if main and loss.group:
        _say_shared_prompt(config, rows, batch_shards(mesh, rules))
    logger = MetricsLogger(os.path.join(workdir, "tb"), total_steps, enabled=main)
    write_data_record(workdir, inputs.data)  # process 0
    with agreed():  # a log corrupt before its last line stops every process, not one
        if main:
            for name in ("rollouts.jsonl", "grpo_log.jsonl"):
                resume_jsonl(os.path.join(workdir, name), start)
            # A fresh run scores its baseline again: no row survives.
            resume_jsonl(os.path.join(workdir, SELECTION_LOG), start if start else -1)
    return GRPORun(
        config=config,
        workdir=workdir,
        examples=examples,
        tokenizer=tokenizer,
        graphdef=graphdef,
        state=state,
        ckpt=ckpt,
        ref=ref,
        judge=judge,
        reward_fn=reward_fn,
        sampler=sampler,
        sampling=SamplingConfig(temperature=rc.temperature, top_k=rc.top_k, top_p=rc.top_p),
        batches=batches,
        logp_fn=jit_log_probs(loss, rc.max_new_tokens),
        step_fn=jit_grpo_update(
            graphdef, tx, loss, shardings, bsh, vsh, **step_options(config.train)
        ),
        bsh=bsh,
        vsh=vsh,
        buckets=buckets,
        pad_id=pad_id,
        stop_ids=stop_ids,
        logger=logger,
        start=start,
        total_steps=total_steps,
        per_epoch=per_epoch,
        compiles=CompileCounter(),
    )


def _say_shared_prompt(config: ConfigDict, rows: int, shards: int) -> None:
    """Says once where `grpo.shared_prompt` falls back to the plain forward (the
    compiled programs decide the same by `shared_prompt_fallback`)."""
    group = int(config.rollout.group_size)
    parts = {
        "the reference and old-policy log-probs": (rows, 1),
        "the update": (minibatch_rows(config, shards), int(config.train.microbatches)),
    }
    for name, (n, k) in parts.items():
        reason = shared_prompt_fallback(n, group, k, shards)
        if reason:
            print(f"grpo.shared_prompt: {name} run every row's prompt ({reason})")


def _load_reference(config: ConfigDict, cfg: ModelConfig, mesh, rules):
    """The frozen reference, (graphdef, params): its own parameters on the same mesh,
    never trained; None when grpo.beta is 0."""
    g = config.grpo
    if not g.beta > 0:
        return None
    ref_model = load_hf_model(
        g.reference_path or config.model.path,
        cfg.param_dtype,
        mesh,
        compute_dtype=cfg.dtype,
        rules=rules,
        scan_layers=cfg.scan_layers,
    )
    return nnx.split(resize_token_embeddings(ref_model, cfg.vocab_size))


def _load_judge(config: ConfigDict, mesh, rules, rows: int, longest: int):
    """The rubric judge on the run's mesh, its length buckets compiled; None when the
    reward does not use it."""
    main = jax.process_index() == 0
    if config.reward.judge_path and not _uses_judge(config.reward):
        # e.g. a pipeline that names one judge for evaluation and a 0 rubric weight here
        if main:
            print("reward.judge_path not loaded: reward.rubric is 0 (or reward.fn is set)")
        return None
    if not config.reward.judge_path:
        return None
    judge = rollout.TimedJudge(
        RubricJudge.from_pretrained(
            config.reward.judge_path,
            _judge_settings(config.reward),
            dtype=config.reward.judge_dtype,
            mesh=mesh,
            rules=rules,
        )
    )
    # The judge's length buckets compiled now, at one batch size, so that no step
    # after the first compiles (kardia_jax/rewards/judge.py, `warm_up`). Its prompts
    # hold the policy prompt's dialogue and the completion, in another tokenizer:
    # buckets up to 1.5x the policy's longest (a longer one compiles when first needed).
    n_programs, seconds = judge.judge.warm_up(rows, max_tokens=int(1.5 * longest))
    if main and n_programs:
        print(f"judge: compiled {n_programs} length buckets in {seconds:.1f} s")
    return judge


def _selector(run: GRPORun, heldout: list) -> Selector:
    config = run.config
    return Selector(
        examples=heldout,
        scfg=config.select,
        workdir=run.workdir,
        sampler=run.sampler,
        tokenizer=run.tokenizer,
        stop_ids=run.stop_ids,
        reward_fn=run.reward_fn,
        judge=run.judge,
        max_new_tokens=config.rollout.max_new_tokens,
        batch=step_batch(config.rollout)[1],  # what the rollouts decode at once
        seed=int(config.data.seed),
        start=run.start,
        compile_count=lambda: run.compiles.count,
    )


def collect(run: GRPORun, step: int) -> Collected:
    """Phase 1: a batch of prompts sampled `group_size` times each, then scored; with
    dynamic sampling, refill rounds until enough groups are informative."""
    rc = run.config.rollout
    prompts_per_step = step_batch(rc)[0]
    parts, t_sample, t_score = [], 0.0, 0.0
    for round_ in range(1 + (rc.max_refill_rounds if rc.dynamic_sampling else 0)):
        batch = next(run.batches)
        index = batch["index"][batch["index"] >= 0]
        prompts = [run.examples[i].prompt_ids.tolist() for i in index]
        t = time.perf_counter()
        comp = run.sampler(
            prompts,
            rc.max_new_tokens,
            run.sampling,
            group_size=rc.group_size,
            seed=rollout_seed(int(run.config.seed), step, round_),
        )
        texts = rollout.decode_completions(run.tokenizer, comp.tokens, comp.lengths, run.stop_ids)
        t_sample += time.perf_counter() - t
        t = time.perf_counter()
        parts.append(score(run, index, prompts, comp, texts))
        t_score += time.perf_counter() - t
        useful = sum(
            rollout.informative_groups(p.rewards["total"], rc.group_size).sum() for p in parts
        )
        if not rc.dynamic_sampling or useful >= prompts_per_step:
            break
    ro = rollout.select_groups(parts, rc.group_size, prompts_per_step, rc.dynamic_sampling)
    return Collected(ro, parts, t_sample, t_score)


def score(run: GRPORun, index, prompts: list, comp, texts: list[str]) -> rollout.Rollouts:
    """Phase 2: the rewards of one round's completions (format, emotion, the judge's
    rubric), kept with everything the update needs (row i * G + g: prompt i)."""
    g = run.config.rollout.group_size
    rep = np.repeat(index, g)
    rewards = rollout.score(run.reward_fn, run.examples, rep, texts)
    return rollout.Rollouts(
        rep,
        [prompts[i // g] for i in range(len(rep))],
        comp.tokens,
        comp.mask,
        comp.logprobs,
        texts,
        comp.finish_reason,
        rewards.components,
    )


def prepare_update(run: GRPORun, ro: rollout.Rollouts):
    """Group-normalised advantages, the static-shape update batch, and the reference's
    and old policy's log-probs of its completions: (advantages, host batch, old_logp,
    ref_logp, seconds per phase)."""
    rc, g = run.config.rollout, run.config.grpo
    adv = rollout.advantages_of(
        ro.rewards["total"], rc.group_size, g.advantage_scale, float(g.advantage_eps)
    )
    plen = bucket_length(max(map(len, ro.prompt_ids)), run.buckets)
    keep = rollout.loss_rows(
        ro, rc.group_size, truncated=rc.mask_truncated, zero_variance=rc.mask_zero_variance
    )
    host = rollout.update_batch(ro, adv, plen, run.pad_id, keep_rows=keep)
    t = time.perf_counter()
    ids = global_batch(host_rows({k: host[k] for k in ("input_ids", "attention_mask")}), run.bsh)
    args = (ids["input_ids"], ids["attention_mask"])
    ref_logp = (
        run.logp_fn(*run.ref, *args) if run.ref is not None else np.zeros_like(host["sampler_logp"])
    )
    ref_logp = np.asarray(fetch(ref_logp)) * host["completion_mask"]  # waits for the device
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    source = old_logp_source(run.config)
    if source == "current":  # the update takes them from its own forward: no pass here
        old_logp = np.zeros_like(host["sampler_logp"])
    elif source == "sampler":
        old_logp = host["sampler_logp"]
    else:
        old_logp = run.logp_fn(run.graphdef, run.state.params, *args)
    old_logp = np.asarray(fetch(old_logp)) * host["completion_mask"]
    t_old = 0.0 if source == "current" else time.perf_counter() - t
    times = {"reference": t_ref, "old_logp": t_old}
    return adv, host, old_logp, ref_logp, times


def update(run: GRPORun, host: dict, old_logp, ref_logp, seed: int) -> list[dict]:
    """Phase 3: `grpo.mu` passes over the rollouts in `grpo.minibatches` shuffled
    minibatches, one optimizer step each; the sampler then takes the new weights.
    Returns each step's metrics, on the host."""
    g, size = run.config.grpo, run.config.rollout.group_size
    rows = step_batch(run.config.rollout)[1]
    rng = np.random.default_rng(seed)
    metrics = []
    for _ in range(g.mu):
        # Groups shuffled whole and kept in order, as the shared-prompt forward needs.
        order = (rng.permutation(rows // size)[:, None] * size + np.arange(size)).reshape(-1)
        for mb in np.array_split(order, g.minibatches):
            part = {
                "input_ids": host["input_ids"][mb],
                "attention_mask": host["attention_mask"][mb],
                "completion_mask": host["completion_mask"][mb],
                "old_logp": old_logp[mb],
                "ref_logp": ref_logp[mb],
                "advantages": host["advantages"][mb],
            }
            run.state, m = run.step_fn(run.state, to_devices(part, run.bsh, run.vsh))
            metrics.append(m)
    run.sampler.update(nnx.merge(run.graphdef, run.state.params))
    return jax.device_get(metrics)


def step_row(run: GRPORun, step, got: Collected, adv, host, metrics, times, t0) -> dict:
    """The step's log row: rewards, advantages, update metrics, seconds per phase."""
    rc = run.config.rollout
    t_judge = run.judge.seconds if run.judge is not None else 0.0
    seconds = dict(
        rollout=got.sample_seconds,
        judge=t_judge,
        reward=got.score_seconds - t_judge,  # format / emotion / custom rewards
        reference=times["reference"],
        old_logp=times["old_logp"],
        update=times["update"],
        total=time.perf_counter() - t0,
    )
    row = step_metrics(
        step,
        got.rollouts,
        adv,
        host,
        metrics,
        got.parts,
        rc.group_size,
        run.config.grpo.mu,
        seconds,
    )
    if run.judge is not None:
        row.update(run.judge.metrics())
    return row


def log_step(run: GRPORun, step: int, row: dict, ro: rollout.Rollouts, adv) -> None:
    """Phase 4 (process 0): the JSONL row, TensorBoard scalars and samples, progress,
    and the rollout ledger."""
    if not run.main:
        return
    config, logger = run.config, run.logger
    append_jsonl(os.path.join(run.workdir, "grpo_log.jsonl"), row)
    logger.scalars(step, {k: v for k, v in row.items() if isinstance(v, int | float)})
    logger.progress(step, {"reward": row["reward/total"], "kl": row.get("kl", 0.0)})
    if config.log.ledger:
        write_ledger(os.path.join(run.workdir, "rollouts.jsonl"), step, ro, adv, run.examples)
    for i in range(min(config.log.text_samples, len(ro))):
        logger.text(step, f"sample/{i}", f"reward {ro.rewards['total'][i]:.3f}\n\n{ro.texts[i]}")


def _check_halted(run: GRPORun, step: int) -> None:
    limit = run.config.train.max_nonfinite
    if int(jax.device_get(run.state.nonfinite_streak)) >= limit:
        raise TrainingHalted(
            f"{limit} non-finite updates in a row at step {step} "
            f"(train.max_nonfinite); the last checkpoint is intact"
        )


def _finish(run: GRPORun, step: int, selector) -> dict:
    """The last checkpoint and the exports; returns the run's summary."""
    ckpt = run.ckpt
    if not ckpt.steps() or ckpt.steps()[-1] != step:
        ckpt.save(step, run.state, run.batches.get_state())
    ckpt.wait()
    summary = {"step": step, "prompts": len(run.examples), "reference_model": run.ref is not None}
    summary.update(final_exports(run.workdir, step, selector, run.export, run.config.export_hf))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # Process 0 writes the exports: no host returns (and reads them) before.
        multihost_utils.sync_global_devices("grpo: exports written")
    return summary


def _select(selector, step, export, logger) -> None:
    row = selector(step, export)
    logger.scalars(step, {k: v for k, v in row.items() if k.startswith("reward/")}, "select")


def prompt_buckets(config: ConfigDict) -> tuple[int, ...]:
    """Prompt lengths are padded to these for the sampler and the update alike (the
    sampler's powers of two when `data.buckets` is empty)."""
    return tuple(int(b) for b in config.data.buckets) or PROMPT_BUCKETS


def rollout_seed(seed: int, step: int, round_: int = 0) -> int:
    """The sampler's seed for a step's refill round: a hash of all three, so distinct
    (step, round) pairs never share a seed (an affine mix such as seed * 7 + round
    collides across steps)."""
    return int(np.random.SeedSequence([seed, step, round_]).generate_state(1)[0])


def _check_settings(config: ConfigDict) -> None:
    rc, g = config.rollout, config.grpo
    old_logp_source(config)
    # The ratio compares log-probs of the sampling distribution, logits / temperature:
    # greedy decoding (0) has none.
    if not float(rc.temperature) > 0:
        raise ConfigError(f"rollout.temperature={rc.temperature}: GRPO samples, need > 0")
    for name, value, allowed in (
        ("grpo.agg", g.agg, AGG_MODES),
        ("grpo.kl_estimator", g.kl_estimator, KL_ESTIMATORS),
        ("grpo.advantage_scale", g.advantage_scale, SCALES),
    ):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    step_batch(rc)
    check_select(config.select)
    for name, value in (
        ("rollout.max_new_tokens", rc.max_new_tokens),
        ("grpo.mu", g.mu),
        ("grpo.minibatches", g.minibatches),
    ):
        if int(value) < 1:
            raise ConfigError(f"{name}={value}: need >= 1")
    if rc.group_size < 2 and g.advantage_scale != "none":
        raise ConfigError("rollout.group_size must be >= 2 for group-normalised advantages")
    if g.beta < 0:
        raise ConfigError(f"grpo.beta={g.beta}: need >= 0")
    # Reward settings fail here, before any model is loaded.
    rw = config.reward
    if _uses_judge(rw) and not rw.judge_path:
        raise ConfigError(f"reward.rubric={rw.rubric} needs a judge: set reward.judge_path")
    if rw.judge_path:
        _judge_settings(rw)
    if rw.get("fn", ""):
        _reward_fn(rw, None)


def _uses_judge(rw: ConfigDict) -> bool:
    return bool(rw.rubric) and not rw.get("fn", "")


def _judge_settings(rcfg: ConfigDict) -> JudgeConfig:
    """reward.judge (a `judge_section()`) -> JudgeConfig."""
    return judge_config_from_section(rcfg.get("judge", {}), "reward.judge")


def _reward_fn(rcfg: ConfigDict, judge):
    """`KardiaReward` with the configured weights, or the custom reward named by
    `reward.fn` ("module:callable", called as fn(texts, contexts, gold_emotions))."""
    spec = rcfg.get("fn", "")
    if not spec:
        return KardiaReward(judge, RewardWeights(rcfg.format, rcfg.emotion, rcfg.rubric))
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"reward.fn={spec!r}: expected 'module:callable'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward.fn={spec!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ConfigError(f"reward.fn={spec!r} is not callable")
    return fn


def to_devices(part, bsh, vsh):
    """A host minibatch of the update -> device arrays ([R] vectors sharded in one dimension)."""
    local = host_rows(part)
    out = global_batch({k: v for k, v in local.items() if k not in VECTOR_KEYS}, bsh)
    out.update(global_batch({k: local[k] for k in VECTOR_KEYS}, vsh))
    return out
