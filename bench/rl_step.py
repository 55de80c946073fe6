"""Seconds per GRPO step and new tokens per second, kardia-jax against TRL's
`GRPOTrainer` and tunix's GRPO learner, on the same work (bench/rl_work.py: the same
HF checkpoint, prompts, P x G completions, max new tokens, temperature, reward, beta,
AdamW at the same lr, f32, one optimizer step per rollout batch).

    python bench/rl_step.py                                   # P 4, G 8, 128 tokens, 4 steps
    python bench/rl_step.py --trainers ours,trl -P 2 -G 2 --max-new-tokens 16 --steps 2
    python bench/rl_step.py --model qwen2.5-0.5b-random

Each trainer runs in its own subprocess (bench/rl_peer_trl.py, bench/rl_peer_tunix.py,
and this file with --runner ours), so memory is returned between them and a trainer
that fails is reported with its error. Each writes a JSON: {"trainer", "versions",
"step_seconds", "phases", "new_tokens", "compile_seconds", "notes"}. The first step is
the warm-up; the table gives the median of the others, tokens/s over them, and each
step time's ratio to ours. Ours is the GRPO driver as `kardia-jax grpo` runs it
(`run_grpo`), its step seconds and phases read from its log rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The worktree's kardia_jax, not an editable install elsewhere; rl_work by path.
sys.path[:0] = [REPO, HERE]

import rl_work  # noqa: E402

TRAINERS = {
    "ours": [os.path.abspath(__file__), "--runner", "ours"],
    "trl": [os.path.join(HERE, "rl_peer_trl.py")],
    "tunix": [os.path.join(HERE, "rl_peer_tunix.py")],
}
GRPO_CONFIG = os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py")


# ---------------------------------------------------------------------------- ours
def ours_overrides(work: rl_work.Work, workdir: str) -> dict:
    """Settings over configs/grpo_tiny.py: the work's, and the demo's GRPO stage's
    model and rollout settings (configs/pipeline_demo.py) for the rest."""
    rows = work.P * work.G
    return {
        "seed": work.seed,
        "model.path": work.model_dir,
        "model.vocab_multiple": rl_work.VOCAB_MULTIPLE,
        "model.compute_dtype": "float32",
        "model.param_dtype": "float32",
        # The demo's: remat keeps the update's activations in memory at 512 + 128
        # tokens a row; decode through unrolled layers is faster on CPU.
        "model.scan_layers": True,
        "model.remat": "full",
        "rollout.unroll_layers": True,
        "data.tokenizer": work.model_dir,
        "data.max_length": rl_work.DATA_SETTINGS["max_length"],
        "data.buckets": rl_work.DATA_SETTINGS["buckets"],
        "rollout.global_batch": rows,
        "rollout.group_size": work.G,
        "rollout.max_new_tokens": work.max_new_tokens,
        "rollout.temperature": work.temperature,
        "rollout.top_p": 1.0,
        "rollout.top_k": 0,
        "rollout.dynamic_sampling": False,  # the same work every step
        "reward.format": rl_work.REWARD_WEIGHTS[0],
        "reward.emotion": rl_work.REWARD_WEIGHTS[1],
        "reward.rubric": rl_work.REWARD_WEIGHTS[2],
        "reward.judge_path": "",
        "grpo.beta": work.beta,
        "grpo.reference_path": "",  # the starting checkpoint
        "grpo.mu": 1,
        "grpo.minibatches": 1,
        "train.lr": work.lr,
        "train.warmup_steps": 0,
        "train.steps": work.steps,
        "checkpoint.every": 0,
        "select.every": 0,
        "export_hf": False,
        "log.text_samples": 0,
    }


def only_work_prompts(grpo_module, indices: list[int]):
    """Makes the driver's prompt stream draw from the work's prompts alone: every
    batch is those P prompts (in a shuffled order), their `index` still pointing into
    the driver's full example list, so scoring finds their gold labels."""
    import numpy as np

    build = grpo_module.build_prompt_dataset
    keep = np.asarray(indices)

    def to_full(batch):
        i = batch["index"]
        return {**batch, "index": np.where(i >= 0, keep[np.maximum(i, 0)], -1)}

    def build_work(examples, **kw):
        return build([examples[i] for i in keep], **kw).map(to_full)

    grpo_module.build_prompt_dataset = build_work


def parse_sets(items: list[str]) -> dict:
    """`--set key=value` pairs (values as Python literals where they parse)."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_caps(items: list[str]) -> dict[str, int]:
    """`--trainer-steps NAME=N` pairs: a trainer run for N steps, fewer than the work's."""
    caps = {}
    for item in items:
        name, sep, n = item.partition("=")
        if not sep or name not in TRAINERS or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--trainer-steps {item!r}: expected NAME=N, NAME in {list(TRAINERS)}")
        caps[name] = int(n)
    return caps


def run_ours(work: rl_work.Work, out: str, sets: dict | None = None) -> None:
    from kardia_jax.host import keep_freed_memory

    keep_freed_memory()  # as the CLI does, before XLA starts its threads
    import jax

    from kardia_jax.compiles import CompileCounter
    from kardia_jax.config_files import load_config
    from kardia_jax.rl import grpo

    workdir = os.path.join(work.dir, "ours-run")
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resumed one
    config = load_config(GRPO_CONFIG)
    with config.unlocked():
        overrides = ours_overrides(work, workdir) | (sets or {})
        for key, value in overrides.items():
            node = config
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            if last not in node:  # a renamed setting must fail here, not be added
                raise KeyError(f"configs/grpo_tiny.py has no {key}")
            node[last] = value
    only_work_prompts(grpo, work.indices)
    compiles = CompileCounter()
    t = time.perf_counter()
    inputs = grpo.prepare_grpo(config, workdir)
    # The driver's example list is rl_work's: the same data settings and tokenizer.
    ours_ids = [inputs.examples[i].prompt_ids.tolist() for i in work.indices]
    if ours_ids != [p["ids"] for p in work.prompts]:
        raise SystemExit("the driver's prompts at the work's indices are not the work's")
    grpo.run_grpo(config, workdir, inputs)
    wall = time.perf_counter() - t
    with open(os.path.join(workdir, "grpo_log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    phases = ("rollout", "reward", "reference", "old_logp", "update")
    result = {
        "trainer": "ours",
        "versions": {
            "kardia_jax": _git_rev(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "step_seconds": [r["time/total_s"] for r in rows],
        "phases": {k: [r[f"time/{k}_s"] for r in rows] for k in phases},
        "new_tokens": [int(round(r["completion/length_mean"] * r["batch/rows"])) for r in rows],
        "compile_seconds": compiles.seconds,
        "compiles": compiles.count,
        "compiles_per_step": [r["compiles"] for r in rows],
        "run_seconds": wall,
        "notes": (
            "kardia_jax.rl.grpo.run_grpo with configs/grpo_tiny.py and bench overrides; "
            "its prompt stream limited to the work's prompts; compile_seconds: every XLA "
            f"compile of the run (load to finish); reward mean per step "
            f"{[round(r['reward/total'], 3) for r in rows]}"
        ),
        "config": overrides,
    }
    _write(out, result)


def _git_rev() -> str:
    try:
        return subprocess.check_output(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


# ---------------------------------------------------------------------- orchestrator
def summarise(result: dict) -> dict:
    """Median step after the warm-up, new tokens per second over the same steps."""
    import numpy as np

    steps = result["step_seconds"]
    timed = slice(1, None) if len(steps) > 1 else slice(None)
    secs, toks = steps[timed], result["new_tokens"][timed]
    phases = result.get("phases") or {}
    return {
        "step_s": float(np.median(secs)),
        "tokens_per_s": float(sum(toks) / sum(secs)),
        "new_tokens": float(np.mean(toks)),
        "phases_s": {k: float(np.median(v[timed])) for k, v in phases.items() if v},
        "timed_steps": len(secs),
    }


def run_trainer(
    name: str, work_dir: str, out_dir: str, timeout: float, python: str, extra=()
) -> dict:
    out = os.path.join(out_dir, f"{name}.json")
    log = os.path.join(out_dir, f"{name}.log")
    if os.path.exists(out):
        os.remove(out)
    cmd = [python, *TRAINERS[name], "--work", work_dir, "--out", out, *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    print(f"== {name}: {' '.join(cmd)} (log: {log})", flush=True)
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t
    if rc == 0 and os.path.exists(out):
        with open(out) as f:
            result = json.load(f)
        result["summary"] = summarise(result)
        result["wall_s"] = wall
        return result
    with open(log) as f:
        tail = f.read()[-3000:]
    return {"trainer": name, "error": f"exit {rc} after {wall:.0f} s", "log_tail": tail}


def table(results: dict) -> str:
    ours = results.get("ours", {}).get("summary")
    lines = [
        f"{'trainer':8} {'step s':>8} {'timed':>5} {'tokens/s':>9} {'new tok':>8} {'x ours':>7}"
        "  phases (s)"
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:8} failed: {r['error']}")
            continue
        s = r["summary"]
        ratio = f"{s['step_s'] / ours['step_s']:.2f}" if ours else "-"
        phases = ", ".join(f"{k} {v:.2f}" for k, v in s["phases_s"].items())
        lines.append(
            f"{name:8} {s['step_s']:8.2f} {s['timed_steps']:5d} {s['tokens_per_s']:9.1f} "
            f"{s['new_tokens']:8.0f} "
            f"{ratio:>7}  {phases}"
        )
    if ours and "compile_seconds" in results["ours"]:
        lines.append(f"ours: {results['ours']['compile_seconds']:.1f} s of XLA compiles in the run")
    return "\n".join(lines)


def orchestrate(args) -> int:
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    loadavg_start = os.getloadavg()
    cmd = [sys.executable, os.path.join(HERE, "rl_work.py"), "--out", out_dir]
    for flag in ("model", "P", "G", "max_new_tokens", "temperature", "beta", "lr", "steps", "seed"):
        opt = f"-{flag}" if len(flag) == 1 else "--" + flag.replace("_", "-")
        cmd += [opt, str(getattr(args, flag))]
    # A subprocess: the checkpoint's export holds JAX memory that the trainers need.
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=REPO))
    work = rl_work.load_work(out_dir)
    caps = parse_caps(args.trainer_steps)
    results = {}
    for name in args.trainers.split(","):
        if name not in TRAINERS:
            raise SystemExit(f"--trainers: unknown {name!r} (known: {', '.join(TRAINERS)})")
        python = args.tunix_python if name == "tunix" else sys.executable
        extra = [f"--set={s}" for s in args.set] if name == "ours" else []
        if name in caps:
            extra.append(f"--steps{'-cap' if name == 'ours' else ''}={caps[name]}")
        results[name] = run_trainer(name, out_dir, out_dir, args.timeout, python, extra)
    report = {
        "command": "python bench/rl_step.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
        },
        "work": {k: v for k, v in work.to_json().items() if k != "prompts"}
        | {"prompt_tokens": [len(p["ids"]) for p in work.prompts]},
        "results": results,
    }
    print(json.dumps(report, indent=1, default=float))
    print(table(results))
    _write(os.path.join(out_dir, "rl_step.json"), report)
    return 0 if all("error" not in r for r in results.values()) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainers", default="ours,trl,tunix")
    ap.add_argument("--out", default="/tmp/rl-step", help="work, logs and results")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per trainer")
    # google-tunix 0.1.7 pins safetensors<0.8 (ours needs >= 0.8): it may live in a venv
    # of its own, with kardia-jax installed there without its dependency checks.
    ap.add_argument("--tunix-python", default=sys.executable, help="interpreter for tunix")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of ours over the bench's (e.g. model.remat=dots_no_batch)",
    )
    ap.add_argument(
        "--trainer-steps",
        action="append",
        default=[],
        metavar="NAME=N",
        help="run NAME for N steps, fewer than --steps (a peer that runs out of memory "
        "later; its table row says how many steps it timed)",
    )
    ap.add_argument("--runner", choices=("ours",), help=argparse.SUPPRESS)
    ap.add_argument("--steps-cap", dest="steps_cap", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    rl_work.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.runner == "ours":
        run_ours(rl_work.load_work(args.work, args.steps_cap), args.out, parse_sets(args.set))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
