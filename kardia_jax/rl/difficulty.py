"""The easy / hard curriculum (SFT takes the easy file, GRPO the hard one), by one
of three signals:

- "verdicts": the paper's rule on the reviewer-verdict rates, when the records carry
  them (the released KardiaBench files do not).
- "likelihood" (ours, the default without verdicts): how likely the base policy finds
  the reference replies, teacher-forced. Before SFT the policy cannot write the span
  markers or pick a label, so a sampled reward sits near zero for every dialogue and
  ranks nothing; the likelihood of the reference content ranks them all, costs one
  forward pass per example, and needs no judge. A dialogue whose replies the base
  model already finds likely is one it can imitate soon (easy); the least likely
  are left to GRPO. The split is a rank cut at `easy_fraction`, so both sides are
  non-empty by construction and the ratio is a setting, reported with the scores.
- "reward": the pass rate of the policy's own samples (completions scored by the
  reward); meaningful for a policy that already writes the format.

The files keep the input records as they were."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from kardia_jax.data.schema import Dialogue
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.jsonio import write_json
from kardia_jax.rl import rollout

TURNS = ("all", "first", "last")
SIGNALS = ("auto", "verdicts", "likelihood", "reward")
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
    turns: str = "all"  # "all" assistant turns of a dialogue, or only its "first" / "last"

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
    """Every example, or each dialogue's first assistant turn (its shortest prompt) or
    last one (its fullest context)."""
    if turns == "all":
        return list(examples)
    pick: dict[str, object] = {}
    later = turns == "last"
    for ex in examples:
        old = pick.get(ex.location)
        if old is None or (ex.turn > old.turn) == later:
            pick[ex.location] = ex
    return [ex for ex in examples if pick[ex.location] is ex]


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
        texts = rollout.decode_completions(tokenizer, comp.tokens, comp.lengths, stop_ids)
        rewards = rollout.score(reward_fn, examples, np.repeat(idx, n), texts)
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
    write_json(paths["report"], report, indent=1, default=None)
    return paths


def build_report(
    split: DifficultySplit, dialogues: Sequence[Dialogue], meta: dict, score: str = "mean_reward"
) -> dict:
    side = {d.location: "easy" for d in split.easy}
    side.update({d.location: "hard" for d in split.hard})
    rows = []
    for d in dialogues:
        prompts = split.prompt_rewards.get(d.location, [])
        rows.append(
            {
                "location": d.location,
                "split": side.get(d.location, "unscored"),
                score: split.dialogue_mean.get(d.location),
                "prompts": [
                    {
                        "turn": t,
                        score: float(np.mean(r)),
                        **({"rewards": r} if score == "mean_reward" else {}),
                    }
                    for t, r in prompts
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
    stop_ids = rollout.stop_token_ids(tokenizer)
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


# -- the likelihood signal ---------------------------------------------------------


def _nll_program(graphdef, mesh=None):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from kardia_jax.models.logprobs import token_log_probs

    # Replicated outputs: every host reads every row's score (a batch-sharded result
    # would not be addressable from one host of a pod).
    rep = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None

    @functools.partial(jax.jit, out_shardings=(rep, rep) if rep is not None else None)
    def run(params, input_ids, attention_mask, index, weight):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(input_ids, attention_mask)
        h = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(input_ids, index + 1, axis=1)
        logp = token_log_probs(model, h, targets)
        w = weight.astype(jnp.float32)
        return jnp.sum(logp * w, axis=1), jnp.sum(w, axis=1)

    return run


def reference_log_likelihood(
    model,
    examples: Sequence,
    *,
    skip_ids: Sequence[int] = (),
    batch_size: int = 8,
    buckets: Sequence[int] = (),
    mesh=None,
    rules=None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[len(examples)] mean log-probability per target token of each example's
    reference turn under `model`, teacher-forced; tokens in `skip_ids` (the span
    markers, whose rows a base model has never trained) are left out of the mean."""
    from flax import nnx

    from kardia_jax.data.pipeline import bucket_length
    from kardia_jax.sharding import batch_shards
    from kardia_jax.train.distributed import global_batch, host_rows
    from kardia_jax.train.state import batch_sharding
    from kardia_jax.train.step import target_bucket, with_target_index

    graphdef, params = nnx.split(model)
    run = _nll_program(graphdef, mesh)
    dp = batch_shards(mesh, rules)
    rows = -(-batch_size // dp) * dp
    bsh = batch_sharding(mesh, rules) if mesh is not None else None
    skip = np.asarray(sorted(skip_ids), np.int64)
    out = np.zeros(len(examples), np.float64)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    for lo in range(0, len(order), rows):
        idx = order[lo : lo + rows]
        longest = max(len(examples[i]) for i in idx)
        t = bucket_length(longest, buckets) if buckets else -(-longest // 64) * 64
        ids = np.zeros((rows, t), np.int32)
        attn = np.zeros((rows, t), np.int32)
        mask = np.zeros((rows, t), np.uint8)
        for r, i in enumerate(idx):
            ex = examples[i]
            n = len(ex)
            ids[r, :n], attn[r, :n] = ex.input_ids, 1
            mask[r, :n] = ex.loss_mask * ~np.isin(ex.input_ids, skip)
        batch = with_target_index({"loss_mask": mask}, target_bucket({"loss_mask": mask}, 64))
        arrays = {
            "input_ids": ids,
            "attention_mask": attn,
            "index": batch["target_index"],
            "weight": batch["target_weight"],
        }
        if bsh is not None:
            arrays = global_batch(host_rows(arrays), bsh)
        total, count = run(
            params, *(arrays[k] for k in ("input_ids", "attention_mask", "index", "weight"))
        )
        total, count = np.asarray(total), np.asarray(count)
        for r, i in enumerate(idx):
            out[i] = total[r] / max(count[r], 1.0)
        if progress is not None:
            progress(min(lo + rows, len(order)), len(order))
    return out


def split_by_rank(
    dialogues: Sequence[Dialogue], examples: Sequence, scores: np.ndarray, easy_fraction: float
) -> DifficultySplit:
    """Ranks dialogues by the mean of their examples' scores (higher = easier) and
    cuts at `easy_fraction`: round(fraction x scored) dialogues, at least one on each
    side. Ties are broken by location, so the cut does not depend on input order."""
    if not 0.0 < easy_fraction < 1.0:
        raise ConfigError(f"split.easy_fraction={easy_fraction}: need a fraction in (0, 1)")
    per: dict[str, list[tuple[int, list[float]]]] = {}
    for ex, s in zip(examples, scores, strict=True):
        per.setdefault(ex.location, []).append((ex.turn, [float(s)]))
    split = DifficultySplit([], [], [], {}, per)
    scored = []
    for d in dialogues:
        if d.location not in per:
            split.unscored.append(d)
            continue
        split.dialogue_mean[d.location] = float(np.mean([r[0] for _, r in per[d.location]]))
        scored.append(d)
    if len(scored) < 2:
        raise DataError(f"a curriculum needs two scored dialogues, found {len(scored)}")
    n_easy = min(len(scored) - 1, max(1, round(easy_fraction * len(scored))))
    ranked = sorted(scored, key=lambda d: (-split.dialogue_mean[d.location], d.location))
    easy = {d.location for d in ranked[:n_easy]}
    for d in dialogues:  # input order in both files
        if d.location in split.dialogue_mean:
            (split.easy if d.location in easy else split.hard).append(d)
    return split


def split_by_verdicts(dialogues: Sequence[Dialogue]) -> DifficultySplit | None:
    """The paper's rule, when every record carries the reviewer-verdict rates; None
    when any lacks them (a partial split would leave those dialogues nowhere)."""
    from kardia_jax.data.splits import verdict_difficulty

    sides = [verdict_difficulty(d) for d in dialogues]
    if not dialogues or any(s is None for s in sides):
        return None
    split = DifficultySplit([], [], [], {}, {})
    for d, side in zip(dialogues, sides, strict=True):
        (split.easy if side == "easy" else split.hard).append(d)
    return split


def curriculum(
    model_dir: str | None,
    data_path: str,
    out_dir: str,
    *,
    signal: str = "auto",
    easy_fraction: float = 0.5,
    turns: str = "all",
    batch_size: int = 8,
    tokenizer_dir: str | None = None,
    dtype: str = "bfloat16",
    max_length: int = 2048,
    buckets: Sequence[int] = (),
    mode: str = "strict",
    mesh=None,
    rules=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Splits the train split of `data_path` into easy.jsonl / hard.jsonl in
    `out_dir` by `signal` ("auto": the verdicts when every record has them, else the
    likelihood; "reward" is `split_difficulty`'s) and writes difficulty.json, the
    split's report; returns {"signal", "counts", "files"}."""
    import jax

    from kardia_jax.data.examples import build_examples
    from kardia_jax.data.tokenizer import load_tokenizer, span_marker_ids
    from kardia_jax.data.validate import load_dialogues

    if signal not in SIGNALS or signal == "reward":
        raise ConfigError(f"split.signal={signal!r}: expected auto, verdicts or likelihood here")
    if turns not in TURNS:
        raise ConfigError(f"split.turns={turns!r}: expected one of {TURNS}")
    if not 0.0 < easy_fraction < 1.0:
        raise ConfigError(f"split.easy_fraction={easy_fraction}: need a fraction in (0, 1)")
    dialogues, report = load_dialogues(data_path, mode=mode, split="train")
    meta = {"data": str(data_path), "files": report.files, "split": "train"}
    result = split_by_verdicts(dialogues) if signal in ("auto", "verdicts") else None
    if result is None and signal == "verdicts":
        raise DataError(
            f"{data_path}: split.signal='verdicts' needs p_fail / p_pass / p_solved on every "
            "record (the released KardiaBench files have none): use 'likelihood'"
        )
    if result is not None:
        used = "verdicts"
        meta["rule"] = (
            "the paper's: easy iff p_FAIL < p_PASS + p_SOLVED or p_FAIL + p_PASS < p_SOLVED"
        )
    else:
        used = "likelihood"
        if not model_dir:
            raise ConfigError("the likelihood curriculum scores with the base policy: set policy")
        from kardia_jax.models import load_hf_model, resize_token_embeddings

        tokenizer = load_tokenizer(tokenizer_dir or model_dir)
        examples = build_examples(dialogues, tokenizer, max_length=max_length, report=report)
        examples = select_turns(examples, turns)
        if not examples:
            raise DataError(f"{data_path}: no examples to score (all too long for max_length?)")
        model = (
            load_hf_model(model_dir, dtype, mesh, rules=rules)
            if mesh is not None
            else (load_hf_model(model_dir, dtype))
        )
        if len(tokenizer) > model.config.vocab_size:  # the span markers the base lacks
            model = resize_token_embeddings(model, len(tokenizer), pad_to_multiple_of=128)

        def progress(done, total):
            log(f"  curriculum: scored {done}/{total} reference turns")

        scores = reference_log_likelihood(
            model,
            examples,
            skip_ids=span_marker_ids(tokenizer).values(),
            batch_size=batch_size,
            buckets=buckets,
            mesh=mesh,
            rules=rules,
            progress=progress,
        )
        result = split_by_rank(dialogues, examples, scores, easy_fraction)
        meta.update(
            model=model_dir,
            rule=(
                f"dialogues ranked by the base policy's mean log-probability per token of "
                f"their reference turns ({turns} turns, span markers left out); the top "
                f"{easy_fraction:g} are easy"
            ),
            settings={"easy_fraction": easy_fraction, "turns": turns, "max_length": max_length},
        )
    meta["signal"] = used
    meta["skipped"] = {**report.skipped, **report.examples_skipped}
    full = build_report(
        result, dialogues, meta, "mean_reward" if used != "likelihood" else "mean_log_prob"
    )
    n = full["counts"]
    full["counts"]["easy_fraction"] = round(n["easy"] / max(n["easy"] + n["hard"], 1), 4)
    if not n["easy"] or not n["hard"]:
        raise DataError(
            f"{data_path}: the {used} curriculum left a split empty "
            f"({n['easy']} easy, {n['hard']} hard)"
        )
    if jax.process_index() == 0:
        paths = write_split(result, data_path, "train", out_dir, full)
    else:
        paths = {
            k: os.path.join(out_dir, f)
            for k, f in (("easy", EASY_FILE), ("hard", HARD_FILE), ("report", REPORT_FILE))
        }
    if jax.process_count() > 1:  # the other hosts read the files next
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("curriculum written")
    return {"signal": used, "counts": full["counts"], "files": paths}
