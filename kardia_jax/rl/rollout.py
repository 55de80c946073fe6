"""Host-side rollout handling: completions -> text -> rewards -> advantages, dynamic
sampling of informative groups, and the static-shape batch the GRPO step takes."""

from __future__ import annotations

import dataclasses

import numpy as np

from kardia_jax.rewards.prompt import JudgeContext
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


def score(reward_fn, examples, index: np.ndarray, texts: list[str]):
    contexts = [JudgeContext.from_example(examples[i]) for i in index]
    gold = [examples[i].emotion for i in index]
    return reward_fn(texts, contexts, gold)


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


def update_batch(
    ro: Rollouts, advantages: np.ndarray, prompt_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """The GRPO step's layout: prompts left-padded to `prompt_len`, completions after."""
    r, n = ro.tokens.shape
    ids = np.full((r, prompt_len + n), pad_id, np.int32)
    attn = np.zeros((r, prompt_len + n), np.int32)
    for i, p in enumerate(ro.prompt_ids):
        ids[i, prompt_len - len(p) : prompt_len] = p
        attn[i, prompt_len - len(p) : prompt_len] = 1
    mask = ro.mask.astype(np.int32)
    ids[:, prompt_len:] = np.where(mask > 0, ro.tokens, pad_id)
    attn[:, prompt_len:] = mask
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "completion_mask": mask,
        "sampler_logp": np.where(mask > 0, ro.sampler_logp, 0.0).astype(np.float32),
        "advantages": advantages.astype(np.float32),
    }


def advantages_of(total: np.ndarray, group_size: int, scale: str, eps: float) -> np.ndarray:
    return np.asarray(group_advantages(total, group_size, scale=scale, eps=eps))
