"""The easy / hard split by pass rate, for data without the reviewers' verdicts: the
policy samples N completions per prompt, the reward scores them, and a dialogue is
easy when the mean reward of its prompts reaches a threshold (SFT takes the easy
file, GRPO the hard one). The files keep the input records as they were."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from kardia_jax.data.schema import Dialogue
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rl import rollout as R

TURNS = ("all", "last")
EASY_FILE, HARD_FILE, REPORT_FILE = "easy.jsonl", "hard.jsonl", "difficulty.json"


@dataclasses.dataclass(frozen=True)
class DifficultySettings:
    samples: int = 8  # completions per prompt (the paper's G)
    threshold: float = 0.5  # easy iff a dialogue's mean reward >= threshold
    max_new_tokens: int = 256
    temperature: float = 1.0  # sample the policy itself, as GRPO will
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16  # prompts per sampler call
    seed: int = 0
    turns: str = "all"  # "all" assistant turns of a dialogue, or only its "last"

    def __post_init__(self):
        for name in ("samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: need >= 1")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"--threshold {self.threshold}: need a finite number")
        if self.turns not in TURNS:
            raise ConfigError(f"--turns {self.turns!r}: expected one of {TURNS}")


@dataclasses.dataclass
class DifficultySplit:
    """Per prompt the N rewards; per dialogue (by its location) the mean and the side."""

    easy: list[Dialogue]
    hard: list[Dialogue]
    unscored: list[Dialogue]  # no prompt left to sample (every turn too long, skip mode)
    dialogue_mean: dict[str, float]
    prompt_rewards: dict[str, list[tuple[int, list[float]]]]  # location -> [(turn, [N])]


def select_turns(examples: Sequence, turns: str) -> list:
    """Every example, or each dialogue's last assistant turn (its fullest context)."""
    if turns == "all":
        return list(examples)
    last: dict[str, object] = {}
    for ex in examples:
        if ex.location not in last or ex.turn > last[ex.location].turn:
            last[ex.location] = ex
    return [ex for ex in examples if last[ex.location] is ex]


def sample_rewards(
    sampler,
    tokenizer,
    examples: Sequence,
    reward_fn: Callable,
    settings: DifficultySettings,
    stop_ids: Sequence[int] = (),
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[len(examples), samples] rewards of completions sampled for each prompt;
    `progress(done, total)` is called after each sampler call."""
    from kardia_jax.sampling import SamplingConfig

    sampling = SamplingConfig(
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p
    )
    n = settings.samples
    out = np.zeros((len(examples), n), np.float32)
    # Similar lengths share a call: less padding, fewer prompt buckets per batch.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
    for b, lo in enumerate(range(0, len(order), settings.batch_size)):
        idx = np.asarray(order[lo : lo + settings.batch_size])
        comp = sampler(
            [examples[i].prompt_ids.tolist() for i in idx],
            settings.max_new_tokens,
            sampling,
            group_size=n,
            seed=settings.seed * 1_000_003 + b,
        )
        texts = R.decode_completions(tokenizer, comp.tokens, comp.lengths, stop_ids)
        rewards = R.score(reward_fn, examples, np.repeat(idx, n), texts)
        out[idx] = np.asarray(rewards.total, np.float32).reshape(len(idx), n)
        if progress is not None:
            progress(lo + len(idx), len(order))
    return out


def split_by_reward(
    dialogues: Sequence[Dialogue], examples: Sequence, rewards: np.ndarray, threshold: float
) -> DifficultySplit:
    """Easy iff the mean over a dialogue's prompts of their mean reward >= threshold
    (each turn weighs the same, however many completions ended early)."""
    per: dict[str, list[tuple[int, list[float]]]] = {}
    for ex, r in zip(examples, rewards, strict=True):
        per.setdefault(ex.location, []).append((ex.turn, [float(x) for x in r]))
    split = DifficultySplit([], [], [], {}, per)
    for d in dialogues:
        scored = per.get(d.location)
        if not scored:
            split.unscored.append(d)
            continue
        mean = float(np.mean([np.mean(r) for _, r in scored]))
        split.dialogue_mean[d.location] = mean
        (split.easy if mean >= threshold else split.hard).append(d)
    return split


def write_split(
    split: DifficultySplit, data_path: str, data_split: str, out_dir: str, report: dict
) -> dict[str, str]:
    """easy.jsonl / hard.jsonl hold the input records as read (before any
    normalisation), in input order, streamed from a second read of the source; each
    file is written beside and renamed, so a crash leaves no half file."""
    from kardia_jax.data.reader import iter_records

    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "easy": os.path.join(out_dir, EASY_FILE),
        "hard": os.path.join(out_dir, HARD_FILE),
        "report": os.path.join(out_dir, REPORT_FILE),
    }
    side = {d.location: "easy" for d in split.easy}
    side.update({d.location: "hard" for d in split.hard})
    written = 0
    with (
        open(paths["easy"] + ".tmp", "w", encoding="utf-8") as easy,
        open(paths["hard"] + ".tmp", "w", encoding="utf-8") as hard,
    ):
        files = {"easy": easy, "hard": hard}
        for location, raw in iter_records(data_path, data_split):
            if location in side:
                files[side[location]].write(json.dumps(raw, ensure_ascii=False, default=str))
                files[side[location]].write("\n")
                written += 1
    if written != len(side):  # the source changed between the two reads
        raise DataError(f"{data_path}: records changed while the split was computed")
    for k in ("easy", "hard"):
        os.replace(paths[k] + ".tmp", paths[k])
    tmp = paths["report"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, paths["report"])
    return paths


def build_report(split: DifficultySplit, dialogues: Sequence[Dialogue], meta: dict) -> dict:
    side = {d.location: "easy" for d in split.easy}
    side.update({d.location: "hard" for d in split.hard})
    rows = []
    for d in dialogues:
        prompts = split.prompt_rewards.get(d.location, [])
        rows.append(
            {
                "location": d.location,
                "split": side.get(d.location, "unscored"),
                "mean_reward": split.dialogue_mean.get(d.location),
                "prompts": [
                    {"turn": t, "mean_reward": float(np.mean(r)), "rewards": r} for t, r in prompts
                ],
            }
        )
    counts = {
        "dialogues": len(dialogues),
        "easy": len(split.easy),
        "hard": len(split.hard),
        "unscored": len(split.unscored),
        "prompts": sum(len(p) for p in split.prompt_rewards.values()),
    }
    return {**meta, "counts": counts, "dialogues": rows}


def split_difficulty(
    model_dir: str,
    data_path: str,
    out_dir: str,
    settings: DifficultySettings = DifficultySettings(),
    *,
    tokenizer_dir: str | None = None,
    judge_dir: str | None = None,
    judge_dtype: str = "bfloat16",
    weights: tuple[float, float, float] | None = None,
    dtype: str = "bfloat16",
    max_length: int = 1536,
    mode: str = "strict",
    split: str = "train",
    reward_fn: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Samples, scores, splits and writes; returns {"counts": ..., "files": ...}.

    The reward is `KardiaReward` with `weights` (format, emotion, rubric); default 1/3
    each with a judge, else 1/2 format + 1/2 emotion. `reward_fn` replaces it (same
    call as `KardiaReward`)."""
    from kardia_jax.data.examples import build_examples
    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.data.validate import load_dialogues
    from kardia_jax.models import load_hf_model, resize_token_embeddings
    from kardia_jax.rewards import KardiaReward, RewardWeights, RubricJudge
    from kardia_jax.sampling import Sampler

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"--model {model_dir}: not a Hugging Face checkpoint (no config.json)")
    if judge_dir and not os.path.isfile(os.path.join(judge_dir, "config.json")):
        raise ConfigError(f"--judge {judge_dir}: not a Hugging Face checkpoint (no config.json)")
    if max_length < 16:
        raise ConfigError(f"--max-length {max_length} is too small")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    if weights is None:
        weights = (1 / 3, 1 / 3, 1 / 3) if judge_dir else (0.5, 0.5, 0.0)
    if len(weights) != 3:
        raise ConfigError(f"--weights {weights}: expected three numbers (format emotion rubric)")
    if weights[2] and not judge_dir and reward_fn is None:
        raise ConfigError(f"--weights {weights}: a rubric weight needs --judge")

    dialogues, report = load_dialogues(data_path, mode=mode, split=split)
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    examples = build_examples(
        dialogues, tokenizer, max_length=max_length, include_target=False, report=report
    )
    examples = select_turns(examples, settings.turns)
    if not examples:
        raise DataError(f"{data_path}: no prompts to sample (all too long for --max-length?)")

    model = load_hf_model(model_dir, dtype=dtype)
    if len(tokenizer) > model.config.vocab_size:  # span markers the checkpoint lacks
        model = resize_token_embeddings(model, -(-len(tokenizer) // 128) * 128)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop_ids = R.stop_token_ids(tokenizer)
    sampler = Sampler(model, eos_ids=stop_ids, pad_id=pad)
    if reward_fn is None:
        judge = None
        if judge_dir and weights[2]:
            judge = RubricJudge.from_pretrained(judge_dir, dtype=judge_dtype)
        reward_fn = KardiaReward(judge, RewardWeights(*weights))

    rewards = sample_rewards(
        sampler, tokenizer, examples, reward_fn, settings, stop_ids, progress=progress
    )
    result = split_by_reward(dialogues, examples, rewards, settings.threshold)
    meta = {
        "model": model_dir,
        "data": str(data_path),
        "settings": dataclasses.asdict(settings),
        "reward": {"weights": list(weights), "judge": judge_dir or None},
        "rule": "easy iff the mean over a dialogue's prompts of their mean reward >= threshold",
        "skipped": {**report.skipped, **report.examples_skipped},
    }
    full = build_report(result, dialogues, meta)
    paths = write_split(result, data_path, split, out_dir, full)
    return {"counts": full["counts"], "files": paths}
