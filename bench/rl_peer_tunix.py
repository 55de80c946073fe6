"""tunix's GRPO learner on the shared work of bench/rl_step.py, timed step by step.

    python bench/rl_peer_tunix.py --work DIR --out FILE.json

Runs in its own process (rl_step.py starts it; the peer's packages are the `bench`
extra). The HF checkpoint of the work is loaded into tunix's model for its
architecture (llama3 for SmolLM2, qwen2 for Qwen2.5), its logits are checked against
transformers' on one prompt, then `tunix.rl.grpo.GRPOLearner` trains on the work's
prompts with the vanilla sampler, the work's reward, AdamW and f32 weights. The JSON:
{"trainer", "versions", "step_seconds", "phases", "new_tokens", "compile_seconds",
"notes", "parity_max_abs_logit_diff", "settings"}.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata as metadata
import json
import os
import resource
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rl_work  # noqa: E402  (bench/ is not a package)

# A peer running a different model is no comparison: tunix's logits must equal
# transformers' on the same weights to this bound before anything is timed.
PARITY_TOL = 1e-3
PACKAGES = ("google-tunix", "jax", "jaxlib", "flax", "optax", "transformers", "torch")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_hf_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def tunix_model(model_dir: str, notes: list[str]):
    """(model, family): the checkpoint in tunix's class for its architecture, f32, with
    the config read from config.json (not a tunix preset: the vocabulary is padded)."""
    from tunix.models.llama3 import model as llama3_model
    from tunix.models.llama3 import params as llama3_params
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params

    hf = read_hf_config(model_dir)
    kind = hf["model_type"]
    if hf.get("rope_scaling"):
        raise SystemExit(f"rope_scaling {hf['rope_scaling']}: tunix's models here have none")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    common = dict(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"],
        # transformers 5 may write the theta under rope_parameters.
        rope_theta=int(hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"]),
        norm_eps=hf["rms_norm_eps"],
    )
    if kind == "llama":
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise SystemExit("a Llama checkpoint with biases: tunix's llama3 has none")
        cfg = llama3_model.ModelConfig(**common, weight_tying=hf["tie_word_embeddings"])
        # tunix 0.1.7's llama3 attention calls apply_rope without config.rope_theta, so
        # every Llama runs at its default 1e6 (SmolLM2's is 1e5); the function is a
        # module global, so binding the checkpoint's theta fixes it without a fork.
        llama3_model.apply_rope = functools.partial(
            llama3_model.apply_rope, rope_theta=cfg.rope_theta
        )
        notes.append(
            f"tunix llama3 ignores config.rope_theta (uses 1e6); patched apply_rope to "
            f"the checkpoint's {cfg.rope_theta}"
        )
        model = llama3_params.create_model_from_safe_tensors(model_dir, cfg, dtype="float32")
        return model, "llama3"
    if kind == "qwen2":
        cfg = qwen2_model.ModelConfig(**common, use_tied_embedding=hf["tie_word_embeddings"])
        model = qwen2_params.create_model_from_safe_tensors(model_dir, cfg, dtype="float32")
        return model, "qwen2"
    raise SystemExit(f"model_type {kind!r}: this runner maps llama and qwen2 to tunix")


def logits_parity(model, model_dir: str, ids: list[int]) -> float:
    """Max |tunix - transformers| over the logits of one prompt (all positions)."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM

    tokens = jnp.asarray([ids], jnp.int32)
    n = len(ids)
    positions = jnp.arange(n, dtype=jnp.int32)[None]
    causal = jnp.tril(jnp.ones((n, n), dtype=jnp.bool_))[None]
    ours, _ = model(tokens, positions, None, causal)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits.numpy()
    del ref
    return float(np.max(np.abs(np.asarray(ours, np.float32) - theirs)))


class PhaseTimer:
    """Wall seconds per phase within the current step; a phase may run several times
    in one step (one per micro-batch), its times add up."""

    def __init__(self):
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                self.current[name] = self.current.get(name, 0.0) + dt
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                print(f"  {name} {dt:.2f} s (peak RSS so far {peak:.1f} GB)", flush=True)

        return timed

    def close_step(self) -> dict[str, float]:
        done, self.current = self.current, {}
        self.steps.append(done)
        return done


def new_tokens_of(tokens, max_new: int) -> int:
    """Tokens sampled: tunix's completions stop before the EOS, which was sampled too."""
    return int(sum(len(t) + (len(t) < max_new) for t in tokens))


def prompts_per_micro(sequences: int, P: int, G: int) -> int:
    """tunix counts micro-batches in prompts (each G sequences), dividing P: the largest
    such count within `sequences` sequences, at least one prompt."""
    return max(d for d in range(1, P + 1) if P % d == 0 and (d == 1 or d * G <= sequences))


def run(work_dir: str, args) -> dict:
    import jax
    import optax
    from transformers import AutoTokenizer
    from tunix.generate import tokenizer_adapter
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout
    from tunix.utils import mesh as mesh_lib

    notes: list[str] = []
    work = rl_work.load_work(work_dir, args.steps)
    P, G = work.P, work.G

    train_micro = prompts_per_micro(args.train_micro, P, G)
    rollout_micro = prompts_per_micro(args.rollout_micro or P * G, P, G)
    logps_micro = prompts_per_micro(args.logps_micro or args.train_micro, P, G)
    prompt_len = max(len(p["ids"]) for p in work.prompts)

    t = time.perf_counter()
    model, family = tunix_model(work.model_dir, notes)
    load_seconds = time.perf_counter() - t
    parity = logits_parity(model, work.model_dir, work.prompts[0]["ids"])
    print(
        f"tunix {family} vs transformers, prompt of {len(work.prompts[0]['ids'])} tokens: "
        f"max |logit diff| {parity:.3g}",
        flush=True,
    )
    if not parity <= PARITY_TOL:
        raise SystemExit(f"tunix's logits differ from transformers' by {parity:.3g} > {PARITY_TOL}")

    # The reference is a second copy of the same weights (grpo_main does the same).
    from flax import nnx

    graph, params = nnx.split(model)
    reference = nnx.merge(graph, jax.tree.map(jax.numpy.copy, params))

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir)
    # The vanilla sampler tokenises the prompt text itself (a BOS put in front, then
    # repeated BOS merged): it must read the work's ids.
    adapter = tokenizer_adapter.TokenizerAdapter(tokenizer)
    bos = [adapter.bos_id()] if adapter.bos_id() is not None else []
    for p in work.prompts:
        if adapter.dedup_bos_ids(bos + adapter.encode(p["text"])) != p["ids"]:
            raise SystemExit(f"prompt {p['index']}: tunix's sampler would read other ids")

    # tunix's own mesh helper (Auto axes: its gathers reject jax's default Explicit ones).
    mesh = mesh_lib.create_mesh((1, 1), ("fsdp", "tp"))
    roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh=dict.fromkeys(roles, mesh),
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.adamw(work.lr, weight_decay=0.0),
            eval_every_n_steps=10**9,
            max_steps=work.steps,
            mini_batch_size=P,  # one optimizer step per rollout batch
            train_micro_batch_size=train_micro,
            rollout_micro_batch_size=rollout_micro,
            compute_logps_micro_batch_size=logps_micro,
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=work.max_new_tokens,
            max_prompt_length=prompt_len,
            kv_cache_size=prompt_len + work.max_new_tokens,
            temperature=work.temperature,
            top_p=1.0,
            top_k=None,
        ),
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=model, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config
    )

    timer = PhaseTimer()
    new_tokens: list[int] = []

    timed_reward = timer.wrap("reward", rl_work.reward)

    def reward_fn(prompts, completions, index, **_):
        # tunix repeats every column of the batch G times, so `index` is per completion.
        return timed_reward([int(i) for i in index], list(completions))

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=G, num_iterations=1, beta=work.beta, epsilon=0.2
        ),
        reward_fns=reward_fn,
    )
    generate = cluster.generate

    def generate_counted(*a, **k):
        out = generate(*a, **k)
        new_tokens[-1] += new_tokens_of(out.tokens, work.max_new_tokens)
        return out

    cluster.generate = timer.wrap("rollout", generate_counted)
    # jax dispatches asynchronously: a phase ends when its arrays are ready, or its time
    # would show up in the phase that first reads them.
    ref_logps = cluster.get_ref_per_token_logps
    cluster.get_ref_per_token_logps = timer.wrap(
        "reference", lambda *a, **k: jax.block_until_ready(ref_logps(*a, **k))
    )
    update_actor = cluster.update_actor

    def update_done(*a, **k):
        update_actor(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))

    cluster.update_actor = timer.wrap("update", update_done)
    step_seconds: list[float] = []
    # tunix's train loop runs one global step (rollout, reference, reward, update) per
    # call of this method and exposes no per-step hook: the timer goes around it.
    global_step = learner._run_global_step

    def timed_step(*a, **k):
        new_tokens.append(0)
        t0 = time.perf_counter()
        global_step(*a, **k)
        step_seconds.append(time.perf_counter() - t0)
        phases = timer.close_step()
        print(
            f"step {len(step_seconds)}: {step_seconds[-1]:.2f} s, "
            f"{new_tokens[-1]} new tokens, phases "
            + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
            flush=True,
        )

    learner._run_global_step = timed_step
    if learner.should_sync_weights:
        notes.append("actor and rollout do not share weights: weight sync is outside step time")

    texts = np.asarray([p["text"] for p in work.prompts], dtype=object)
    indices = np.asarray(work.indices)
    batches = [{"prompts": texts, "index": indices} for _ in range(work.steps)]
    t = time.perf_counter()
    learner.train(batches)
    train_seconds = time.perf_counter() - t

    phase_names = sorted({k for s in timer.steps for k in s})
    return {
        "trainer": "tunix",
        "versions": versions(),
        "step_seconds": step_seconds,
        "phases": {k: [s.get(k, 0.0) for s in timer.steps] for k in phase_names},
        "new_tokens": new_tokens,
        "compile_seconds": None,
        "parity_max_abs_logit_diff": parity,
        "load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "settings": {
            "model_class": family,
            "prompt_length": prompt_len,
            "sequences_per_micro_batch": {
                "train": train_micro * G,
                "rollout": rollout_micro * G,
                "logps": logps_micro * G,
            },
            "optimizer": f"optax.adamw(lr={work.lr}, weight_decay=0.0)",
            "sampler": "vanilla, top_p 1.0, no top_k",
        },
        "notes": notes,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder holding work.json")
    ap.add_argument("--out", required=True, help="the result JSON")
    ap.add_argument("--steps", type=int, help="fewer steps than the work's")
    ap.add_argument(
        "--train-micro",
        type=int,
        default=8,
        help="sequences per training micro-batch, rounded down to whole groups of G "
        "(tunix counts micro-batches in prompts); its update keeps every layer's "
        "activations, so this bounds the memory",
    )
    ap.add_argument(
        "--rollout-micro",
        type=int,
        default=None,
        help="sequences per rollout micro-batch (default: all P x G at once)",
    )
    ap.add_argument(
        "--logps-micro",
        type=int,
        default=None,
        help="sequences per reference log-prob micro-batch (default: --train-micro)",
    )
    args = ap.parse_args(argv)
    try:
        result = run(args.work, args)
        rc = 0
    except BaseException as e:  # the orchestrator reports a failed peer by its error
        result = {
            "trainer": "tunix",
            "versions": versions(),
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
        rc = 1
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result.get(k) for k in ("step_seconds", "new_tokens", "error")}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
