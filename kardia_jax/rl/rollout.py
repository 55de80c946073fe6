"""Host-side rollout handling: completions -> text -> rewards -> advantages, dynamic
sampling of informative groups, and the static-shape batch the GRPO step takes."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from kardia_jax.data.pipeline import pad_left
from kardia_jax.data.template import chat_stop_ids
from kardia_jax.errors import ConfigError
from kardia_jax.rewards.combine import RewardBatch
from kardia_jax.rewards.prompt import JudgeContext
from kardia_jax.rewards.rubric import DIMENSIONS
from kardia_jax.rl.core import group_advantages


@dataclasses.dataclass
class Rollouts:
    """G completions for each of a set of prompts (rows grouped by prompt)."""

    example_index: np.ndarray  # [R] index into the prompt examples
    prompt_ids: list[list[int]]  # [R]
    tokens: np.ndarray  # [R, N] sampled ids (pad after the end)
    mask: np.ndarray  # [R, N] bool, the stop token included
    sampler_logp: np.ndarray  # [R, N]
    texts: list[str]
    finish_reason: list[str]
    rewards: dict[str, np.ndarray]  # "total" and every component, [R]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows) -> Rollouts:
        rows = np.asarray(rows, np.int64)
        return Rollouts(
            self.example_index[rows],
            [self.prompt_ids[i] for i in rows],
            self.tokens[rows],
            self.mask[rows],
            self.sampler_logp[rows],
            [self.texts[i] for i in rows],
            [self.finish_reason[i] for i in rows],
            {k: v[rows] for k, v in self.rewards.items()},
        )

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        return Rollouts(
            np.concatenate([p.example_index for p in parts]),
            [x for p in parts for x in p.prompt_ids],
            np.concatenate([p.tokens for p in parts]),
            np.concatenate([p.mask for p in parts]),
            np.concatenate([p.sampler_logp for p in parts]),
            [x for p in parts for x in p.texts],
            [x for p in parts for x in p.finish_reason],
            {k: np.concatenate([p.rewards[k] for p in parts]) for k in parts[0].rewards},
        )


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids that end a completion: the chat template's end of turn, the tokenizer's
    eos and the text's end, where the tokenizer has them (data.template)."""
    return chat_stop_ids(tokenizer)


def decode_completions(tokenizer, tokens: np.ndarray, lengths: np.ndarray, stop_ids) -> list[str]:
    """Completion text with span markers kept (they are special tokens) and the final
    stop token dropped."""
    out = []
    for row, n in zip(tokens, lengths, strict=True):
        ids = row[:n].tolist()
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        out.append(tokenizer.decode(ids, skip_special_tokens=False))
    return out


def score(reward_fn, examples, index: np.ndarray, texts: list[str]) -> RewardBatch:
    """Rewards of `texts`, row i being a completion of `examples[index[i]]`.
    `reward_fn(texts, contexts, gold_emotions)` is `KardiaReward` or a custom reward
    (`reward.fn`) returning a `RewardBatch` or a dict of [R] arrays with a "total"."""
    contexts = [JudgeContext.from_example(examples[i]) for i in index]
    gold = [examples[i].emotion for i in index]
    out = reward_fn(texts, contexts, gold)
    if isinstance(out, dict):
        out = RewardBatch({k: np.asarray(v, np.float32) for k, v in out.items()}, {})
    total = np.asarray(out.components.get("total")) if "total" in out.components else None
    if total is None or total.shape != (len(texts),):
        raise ConfigError(
            f"the reward function returned no 'total' of shape ({len(texts)},) "
            f"(got {None if total is None else total.shape})"
        )
    bad = np.flatnonzero(~np.isfinite(total))
    if bad.size:
        # Refused rather than dropped: a group's advantage would be NaN, and a silently
        # smaller batch would train on other data than the ledger records.
        raise ConfigError(
            f"the reward function returned a non-finite 'total' for {bad.size} of "
            f"{len(texts)} completions (rows {bad[:8].tolist()}: {total[bad[:8]].tolist()}); "
            "rerun to resume from the last checkpoint once the reward is fixed"
        )
    return out


class TimedJudge:
    """A `RubricJudge` seen through `KardiaReward`: times each `evaluate` call (the
    judge is its own phase of a GRPO step) and keeps the results for the step's logs."""

    def __init__(self, judge):
        self.judge = judge
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.results = []

    def evaluate(self, contexts, completions):
        t0 = time.perf_counter()
        result = self.judge.evaluate(contexts, completions)  # scores are on the host
        self.seconds += time.perf_counter() - t0
        self.results.append(result)
        return result

    def metrics(self) -> dict[str, float | str]:
        """judge/<dimension> means and judge/<count> sums over every candidate judged
        since `reset` (refill rounds included), the score-token mass, the rubric id."""
        if not self.results:
            return {}
        scores = np.concatenate([r.scores for r in self.results])
        out = {f"judge/{d}": float(scores[:, j].mean()) for j, d in enumerate(DIMENSIONS)}
        mass = np.concatenate([r.mass.reshape(-1) for r in self.results])
        if np.any(~np.isnan(mass)):
            out["judge/score_token_mass"] = float(np.nanmean(mass))
        for k in self.results[0].counts:
            out[f"judge/{k}"] = float(sum(r.counts.get(k, 0) for r in self.results))
        out["judge/rubric"] = self.results[0].rubric_id  # text: the JSONL log only
        return out


def informative_groups(total: np.ndarray, group_size: int) -> np.ndarray:
    """[num_groups] bool: groups whose rewards differ (zero variance teaches nothing)."""
    g = total.reshape(-1, group_size)
    return g.max(axis=1) > g.min(axis=1)


def select_groups(parts: list[Rollouts], group_size: int, want: int, dynamic: bool) -> Rollouts:
    """`want` groups: informative ones first (in draw order), topped up with the
    zero-variance ones when the refills ran out, so the batch shape never changes."""
    pool = Rollouts.concat(parts)
    n_groups = len(pool) // group_size
    if not dynamic:
        order = np.arange(min(want, n_groups))
    else:
        useful = informative_groups(pool.rewards["total"], group_size)
        order = np.concatenate([np.flatnonzero(useful), np.flatnonzero(~useful)])[:want]
    rows = (order[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
    return pool.take(rows)


def loss_rows(
    ro: Rollouts, group_size: int, *, truncated: bool = False, zero_variance: bool = False
) -> np.ndarray:
    """[R] bool: the completions that enter the loss. `truncated=True` drops those cut
    at the budget (DAPO's overlong filtering: the reward judged an unfinished answer;
    they still count in their group's statistics); `zero_variance=True` drops groups
    whose rewards are all equal (no policy-gradient signal) so that they neither add
    KL nor dilute the token-mean normaliser: the masking alternative to refilling."""
    keep = np.ones(len(ro), bool)
    if truncated:
        keep &= np.asarray([f != "length" for f in ro.finish_reason], bool)
    if zero_variance:
        keep &= np.repeat(informative_groups(ro.rewards["total"], group_size), group_size)
    return keep


def update_batch(
    ro: Rollouts,
    advantages: np.ndarray,
    prompt_len: int,
    pad_id: int,
    *,
    keep_rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The GRPO step's layout: prompts left-padded to `prompt_len`, completions after.
    Rows not in `keep_rows` (see `loss_rows`) get an empty loss mask; the row keeps its
    tokens, so the batch shape never changes."""
    r, n = ro.tokens.shape
    ids = np.full((r, prompt_len + n), pad_id, np.int32)
    attn = np.zeros((r, prompt_len + n), np.int32)
    ids[:, :prompt_len], attn[:, :prompt_len] = pad_left(ro.prompt_ids, prompt_len, pad_id, r)
    mask = ro.mask.astype(np.int32)
    ids[:, prompt_len:] = np.where(mask > 0, ro.tokens, pad_id)
    attn[:, prompt_len:] = mask
    if keep_rows is not None:
        mask = mask * np.asarray(keep_rows, np.int32)[:, None]
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "completion_mask": mask,
        "sampler_logp": np.where(mask > 0, ro.sampler_logp, 0.0).astype(np.float32),
        "advantages": advantages.astype(np.float32),
    }


def advantages_of(total: np.ndarray, group_size: int, scale: str, eps: float) -> np.ndarray:
    return np.asarray(group_advantages(total, group_size, scale=scale, eps=eps))
