"""What a GRPO step logs: the scalars of each step (rewards per component and rubric
dimension, advantages, KL, clipping, ratios, entropy, lengths, zero-variance groups,
time per phase, throughput, compiles) and the rollout ledger."""

from __future__ import annotations

import numpy as np

from kardia_jax.jsonio import append_jsonl
from kardia_jax.rl import rollout


def step_metrics(step, ro, adv, host, metrics, parts, group_size, mu, times) -> dict:
    def mean(k):
        return (
            float(np.mean([m[k] for m in metrics if k in m]))
            if any(k in m for m in metrics)
            else None
        )

    lengths = ro.mask.sum(1)
    pool = rollout.Rollouts.concat(parts)
    row = {"step": step}
    for k, v in ro.rewards.items():
        row[f"reward/{k}"] = float(np.mean(v))
        row[f"reward/{k}_std"] = float(np.std(v))
    row.update(
        {
            "advantage/mean": float(np.mean(adv)),
            "advantage/std": float(np.std(adv)),
            "advantage/abs_max": float(np.max(np.abs(adv))),
            "completion/length_mean": float(lengths.mean()),
            "completion/length_max": int(lengths.max()),
            "completion/truncated_fraction": float(
                np.mean([f == "length" for f in ro.finish_reason])
            ),
            "completion/loss_tokens": int(host["completion_mask"].sum()),
            # Of every group sampled this step (refills included) ...
            "zero_variance_fraction": float(
                1 - rollout.informative_groups(pool.rewards["total"], group_size).mean()
            ),
            # ... and of the groups kept for the update (0 when the refills sufficed).
            "batch/zero_variance_fraction": float(
                1 - rollout.informative_groups(ro.rewards["total"], group_size).mean()
            ),
            "batch/rows": len(ro),
            # Sampler throughput (every sampled token, refills included) and the
            # tokens (prompt + completion) the update passes push through the model.
            "rollout/tokens_per_s": float(pool.mask.sum() / max(times["rollout"], 1e-9)),
            "update/tokens_per_s": float(
                mu * host["attention_mask"].sum() / max(times["update"], 1e-9)
            ),
            "tokens_per_s": float(lengths.sum() / max(times["total"], 1e-9)),
        }
    )
    for k in (
        "loss",
        "pg_loss",
        "kl",
        "entropy",
        "clip_frac",
        "clip_frac_low",
        "clip_frac_high",
        "ratio_mean",
        "grad_norm",
        "skipped",
    ):
        v = mean(k)
        if v is not None:
            row[k] = v
    row["ratio_min"] = float(min(m["ratio_min"] for m in metrics))
    row["ratio_max"] = float(max(m["ratio_max"] for m in metrics))
    row.update({f"time/{k}_s": v for k, v in times.items()})
    return row


def _ledger_row(step, ro, adv, examples, i) -> dict:
    ex = examples[int(ro.example_index[i])]
    return {
        "step": step,
        "example": int(ro.example_index[i]),
        # the prompt: the record and the assistant turn it asks for
        "prompt": f"{ex.location} messages[{ex.turn}]",
        "completion": ro.texts[i],
        "finish_reason": ro.finish_reason[i],
        "advantage": float(adv[i]),
        **{f"reward/{k}": float(v[i]) for k, v in ro.rewards.items()},
    }


def write_ledger(path, step, ro, adv, examples):
    append_jsonl(path, [_ledger_row(step, ro, adv, examples, i) for i in range(len(ro))])
