"""GRPO step benchmark: one full step of the GRPO driver's loop (rollout with our
sampler, format + emotion + rubric-judge rewards, group advantages, reference and
old-policy log-probs, the jitted update) on a tiny policy, timed per phase, with
compile counts, the host-idle fraction, and the step's wall time against the sum of
its phases each measured alone.

    python bench/grpo_step.py                 # configs/grpo_tiny.py's batch, tiny policy + judge
    python bench/grpo_step.py --size small    # 4-layer, 256-wide policy and judge
    python bench/grpo_step.py --no-judge      # format + emotion rewards only
    python bench/grpo_step.py --model smollm2 --config kardia_jax/configs/pipeline_demo.py
                                              # the demo's GRPO step on SmolLM2-135M

The step body mirrors `kardia_jax.rl.grpo.run_grpo` piece by piece (same functions:
`Sampler`, `rollout.score`, `update_batch`, `grpo_step`, the old log-probs' source),
with dynamic sampling off so every step does the same work. Policy, reference and
judge are random models with the Qwen2.5 vocabulary, or (`--model smollm2`) the real
SmolLM2-135M-Instruct for all three, loaded as the demo pipeline loads them (its
tokenizer with the span markers, a pipeline config's `grpo` section); prompts are the
bundled sample's hard split. Compiles are
counted and named by the driver's `CompileCounter` (every backend compile, from
`jax.monitoring`); the persistent compilation cache is off so each one is real.
Host-idle: time the host spends blocked on device results (`jax.device_get`,
`block_until_ready`) over the step's wall time. Prints one JSON object and a
one-line summary; a script, not a test (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from kardia_jax.compiles import CompileCounter
from kardia_jax.config_files import load_config
from kardia_jax.data.pipeline import bucket_length
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.host import keep_freed_memory
from kardia_jax.models import ModelConfig, init_model, load_hf_model, resize_token_embeddings
from kardia_jax.pipeline.stages import NAMED_CHECKPOINTS, resolve_checkpoint
from kardia_jax.rewards import JudgeConfig, KardiaReward, RewardWeights, RubricJudge
from kardia_jax.rewards.judge import judge_config_from_section
from kardia_jax.rl import rollout
from kardia_jax.rl.config import old_logp_source, step_batch
from kardia_jax.rl.grpo import load_grpo_prompts, prompt_buckets, to_devices
from kardia_jax.rl.step import GRPOLoss, jit_grpo_update, jit_log_probs
from kardia_jax.sampling import Sampler, SamplingConfig
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.setup import mesh_and_rules, planned_model_config
from kardia_jax.train.state import batch_sharding, init_train_state
from kardia_jax.train.step import step_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_shape(size: str, vocab: int) -> ModelConfig:
    if size == "tiny":  # configs/sft_tiny.py's model
        dims = dict(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, head_dim=16)
    else:
        dims = dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, head_dim=64)
    return ModelConfig(
        family="qwen2",
        vocab_size=vocab,
        num_kv_heads=2,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
        max_position_embeddings=4096,
        **dims,
    )


# ------------------------------------------------------------ instrumentation
class Blocked:
    """Wall time the host spends waiting for device results."""

    def __init__(self):
        self.seconds = 0.0
        self._get, self._block = jax.device_get, jax.block_until_ready

        def get(x):
            t = time.perf_counter()
            try:
                return self._get(x)
            finally:
                self.seconds += time.perf_counter() - t

        def block(x):
            t = time.perf_counter()
            try:
                return self._block(x)
            finally:
                self.seconds += time.perf_counter() - t

        jax.device_get, jax.block_until_ready = get, block


# --------------------------------------------------------------------- the step
class GRPOBench:
    def __init__(self, config, size: str, judge: bool, checkpoint: str | None = None):
        self.config = config
        rc = config.rollout
        self.mesh, self.rules = mesh_and_rules(config)
        self.tokenizer = load_tokenizer(checkpoint)  # the span markers added
        self.examples = load_grpo_prompts(config.data, self.tokenizer)
        self.prompts_per_step, self.rows = step_batch(rc)  # rollout.global_batch completions
        self.tx = make_optimizer(config.train, 1000)
        self.loss = GRPOLoss.from_config(config)
        if checkpoint is None:
            vocab = -(-len(self.tokenizer) // 128) * 128
            cfg = policy_shape(size, vocab).replace(dtype=config.model.compute_dtype)
            self.graphdef, self.state, shardings = init_train_state(
                cfg, self.tx, self.mesh, self.rules, seed=0
            )
            # The frozen reference: the same initial weights, its own copy.
            self.ref = nnx.split(init_model(cfg, seed=0))
        else:  # as the GRPO driver loads its policy and reference (rl/grpo.py)
            cfg = planned_model_config(config.model, len(self.tokenizer))
            self.graphdef, self.state, shardings = init_train_state(
                cfg, self.tx, self.mesh, self.rules, hf_path=checkpoint
            )
            ref = load_hf_model(
                checkpoint,
                cfg.param_dtype,
                self.mesh,
                compute_dtype=cfg.dtype,
                rules=self.rules,
                scan_layers=cfg.scan_layers,
            )
            self.ref = nnx.split(resize_token_embeddings(ref, cfg.vocab_size))
        self.buckets = prompt_buckets(config)  # the driver's (the sampler's when empty)
        weights = RewardWeights(1 / 3, 1 / 3, 1 / 3) if judge else RewardWeights(0.5, 0.5, 0.0)
        rubric_judge = None
        if judge and checkpoint is not None:
            rubric_judge = RubricJudge.from_pretrained(
                checkpoint,
                judge_config_from_section(config.reward.get("judge", {}), "reward.judge"),
                dtype=config.reward.judge_dtype,
                mesh=self.mesh,
                rules=self.rules,
            )
        elif judge:
            jcfg = policy_shape(size, cfg.vocab_size)
            rubric_judge = RubricJudge(init_model(jcfg, seed=1), self.tokenizer, JudgeConfig())
        if rubric_judge is not None:
            # As the driver does (rl/grpo.py): length buckets compiled up front.
            longest = max(self.buckets) + rc.max_new_tokens
            rubric_judge.warm_up(self.rows, max_tokens=int(1.5 * longest))
        self.reward_fn = KardiaReward(rubric_judge, weights)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.stop_ids = rollout.stop_token_ids(tok)
        self.sampler = Sampler(
            nnx.merge(self.graphdef, self.state.params),
            eos_ids=self.stop_ids,
            pad_id=self.pad_id,
            mesh=self.mesh,
            rules=self.rules,
            prompt_buckets=self.buckets,
            unroll_layers=rc.unroll_layers,
        )
        self.sampling = SamplingConfig(temperature=rc.temperature, top_k=rc.top_k, top_p=rc.top_p)
        self.bsh = batch_sharding(self.mesh, self.rules)
        self.vsh = batch_sharding(self.mesh, self.rules, ndim=1)
        # Built as the driver builds them (rl/grpo.py).
        self.logp_fn = jit_log_probs(self.loss, rc.max_new_tokens)
        self.step_fn = jit_grpo_update(
            self.graphdef,
            self.tx,
            self.loss,
            shardings,
            self.bsh,
            self.vsh,
            **step_options(config.train),
        )

    def prompts(self, step: int):
        n = self.prompts_per_step
        index = np.array([(step * n + i) % len(self.examples) for i in range(n)])
        return index, [self.examples[i].prompt_ids.tolist() for i in index]

    # Each phase takes the previous one's output, so it can also be run alone.
    def rollout(self, step, index, prompts):
        rc = self.config.rollout
        comp = self.sampler(
            prompts, rc.max_new_tokens, self.sampling, group_size=rc.group_size, seed=step
        )
        texts = rollout.decode_completions(self.tokenizer, comp.tokens, comp.lengths, self.stop_ids)
        return comp, texts

    def judge(self, index, texts):
        rep = np.repeat(index, self.config.rollout.group_size)
        return rep, rollout.score(self.reward_fn, self.examples, rep, texts)

    def batch(self, prompts, comp, texts, rep, rewards):
        rc, g = self.config.rollout, self.config.grpo
        ro = rollout.Rollouts(
            rep,
            [prompts[i // rc.group_size] for i in range(len(rep))],
            comp.tokens,
            comp.mask,
            comp.logprobs,
            texts,
            comp.finish_reason,
            rewards.components,
        )
        adv = rollout.advantages_of(
            ro.rewards["total"], rc.group_size, g.advantage_scale, float(g.advantage_eps)
        )
        plen = bucket_length(max(map(len, ro.prompt_ids)), self.buckets)
        return rollout.update_batch(ro, adv, plen, self.pad_id)

    def _ids(self, host):
        ids = jax.device_put(
            {k: host[k] for k in ("input_ids", "attention_mask")}, self.bsh
        )  # one host: its rows are the global batch
        return ids["input_ids"], ids["attention_mask"]

    def reference(self, host):
        ref = self.logp_fn(*self.ref, *self._ids(host))
        return jax.device_get(ref) * host["completion_mask"]

    def old_logp(self, host):
        """The old policy's log-probs from where the driver takes them
        (`rollout.old_logp`): none to compute when the update is on-policy."""
        source = old_logp_source(self.config)
        if source == "current":
            return np.zeros_like(host["sampler_logp"])
        if source == "sampler":
            return host["sampler_logp"]
        old = self.logp_fn(self.graphdef, self.state.params, *self._ids(host))
        return jax.device_get(old) * host["completion_mask"]

    def update(self, step, host, old_logp, ref_logp):
        g, size = self.config.grpo, self.config.rollout.group_size
        rng = np.random.default_rng(step)
        metrics = []
        for _ in range(g.mu):
            # Whole groups in order, as the driver shuffles them (rl/grpo.py `update`).
            order = (rng.permutation(self.rows // size)[:, None] * size + np.arange(size)).reshape(
                -1
            )
            for mb in np.array_split(order, g.minibatches):
                part = {
                    "input_ids": host["input_ids"][mb],
                    "attention_mask": host["attention_mask"][mb],
                    "completion_mask": host["completion_mask"][mb],
                    "old_logp": old_logp[mb],
                    "ref_logp": ref_logp[mb],
                    "advantages": host["advantages"][mb],
                }
                self.state, m = self.step_fn(self.state, to_devices(part, self.bsh, self.vsh))
                metrics.append(m)
        self.sampler.update(nnx.merge(self.graphdef, self.state.params))
        return jax.device_get(metrics)

    def full_step(self, step: int) -> dict:
        times = {}
        t0 = time.perf_counter()
        index, prompts = self.prompts(step)
        comp, texts = self.rollout(step, index, prompts)
        t1 = time.perf_counter()
        rep, rewards = self.judge(index, texts)
        host = self.batch(prompts, comp, texts, rep, rewards)
        t2 = time.perf_counter()
        ref = self.reference(host)
        t3 = time.perf_counter()
        old = self.old_logp(host)
        t4 = time.perf_counter()
        self.update(step, host, old, ref)
        t5 = time.perf_counter()
        times.update(
            rollout=t1 - t0, judge=t2 - t1, reference=t3 - t2, old_logp=t4 - t3, update=t5 - t4
        )
        times["total"] = t5 - t0
        self._last = (step, index, prompts, comp, texts, rep, rewards, host, old, ref)
        return times

    def phases_alone(self, reps: int) -> dict:
        """Each phase again on the last step's inputs, best of `reps`."""
        step, index, prompts, comp, texts, rep, rewards, host, old, ref = self._last
        runs = {
            "rollout": lambda: self.rollout(step, index, prompts),
            "judge": lambda: self.batch(prompts, comp, texts, *self.judge(index, texts)),
            "reference": lambda: self.reference(host),
            "old_logp": lambda: self.old_logp(host),
            "update": lambda: self.update(step, host, old, ref),
        }
        best = {}
        for name, fn in runs.items():
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = min(times)
        return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")
    ap.add_argument(
        "--model",
        choices=("random", *NAMED_CHECKPOINTS),
        default="random",
        help="random (--size) or a real checkpoint for policy, reference and judge",
    )
    ap.add_argument("--config", default=os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py"))
    ap.add_argument("--steps", type=int, default=6, help="steps after the first (compiling) one")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each phase alone (0: none)")
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    args, overrides = ap.parse_known_args(argv)
    keep_freed_memory()  # before XLA starts its threads: kardia_jax/host.py

    jax.config.update("jax_enable_compilation_cache", False)
    config = load_config(args.config, overrides)
    if "rollout" not in config:  # a pipeline config: its GRPO stage's settings
        config = config.grpo
    with config.unlocked():
        config.rollout.dynamic_sampling = False  # the same work every step
    checkpoint = None
    if args.model != "random":
        checkpoint = resolve_checkpoint(args.model, "--model")
        config.model.path = checkpoint
    loadavg_start = os.getloadavg()
    compiles = CompileCounter()  # the driver's counter (kardia_jax/compiles.py)
    bench = GRPOBench(config, args.size, judge=not args.no_judge, checkpoint=checkpoint)
    blocked = Blocked()

    steps = []
    for step in range(1 + args.steps):
        before = (compiles.count, compiles.seconds, compiles.by_name())
        blocked_before = blocked.seconds
        times = bench.full_step(step)
        after = (compiles.count, compiles.seconds, compiles.by_name())
        steps.append(
            {
                "step": step,
                "seconds": times,
                "compiles": after[0] - before[0],
                "compile_s": after[1] - before[1],
                "compiled": {
                    k: v - before[2].get(k, 0)
                    for k, v in after[2].items()
                    if v > before[2].get(k, 0)
                },
                "host_blocked_s": blocked.seconds - blocked_before,
            }
        )
    warm = steps[1:]
    alone = bench.phases_alone(args.reps) if args.reps else {}
    wall = float(np.median([s["seconds"]["total"] for s in warm]))
    phase_median = {
        k: float(np.median([s["seconds"][k] for s in warm]))
        for k in ("rollout", "judge", "reference", "old_logp", "update")
    }
    rc = config.rollout
    report = {
        "command": "python bench/grpo_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(jax.devices()[0].device_kind),
        "devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg_start,
        "jax": jax.__version__,
        "policy": args.size if checkpoint is None else args.model,
        "judge": not args.no_judge,
        "old_logp": old_logp_source(config),
        "shared_prompt": bool(config.grpo.shared_prompt),
        "prompt_buckets": list(bench.buckets),
        "rollouts_per_step": bench.rows,
        "max_new_tokens": rc.max_new_tokens,
        "first_step": steps[0],
        "steps": warm,
        "step_wall_s_median": wall,
        "phase_s_median": phase_median,
        "phase_s_alone": alone,
        "wall_over_sum_alone": wall / sum(alone.values()) if alone else None,
        "recompiles_after_first_step": sum(s["compiles"] for s in warm),
        "recompiled_after_first_step": [n for s in warm for n in s["compiled"]],
        "host_idle_fraction": float(
            np.median([s["host_blocked_s"] / s["seconds"]["total"] for s in warm])
        ),
        "loadavg_end": os.getloadavg(),
    }
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    s0 = steps[0]
    print(
        f"SUMMARY: GRPO step ({report['policy']} policy, {bench.rows} rollouts x "
        f"{rc.max_new_tokens} tokens{'' if args.no_judge else ', judge'}, old_logp "
        f"{report['old_logp']}, shared_prompt {report['shared_prompt']}): {wall:.2f} s wall"
        + (
            f" vs {sum(alone.values()):.2f} s sum of phases alone "
            f"({report['wall_over_sum_alone']:.2f}x)"
            if alone
            else ""
        )
        + "; "
        + ", ".join(f"{k} {v:.2f}" for k, v in phase_median.items())
        + f"; first step {s0['seconds']['total']:.1f} s with {s0['compiles']} compiles "
        f"({s0['compile_s']:.1f} s); {report['recompiles_after_first_step']} recompiles after "
        f"{sorted(set(report['recompiled_after_first_step']))}; "
        f"host idle {report['host_idle_fraction']:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
