"""Best-checkpoint selection, the paper's "best checkpoint across RL epochs": prompts of
profiles GRPO never trains on, answered by the current policy and scored with the
training reward every `select.every` steps; each new best is exported to
WORKDIR/best/hf, and the history goes to WORKDIR/selection.jsonl."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from kardia_jax.data.splits import profile_split
from kardia_jax.errors import ConfigError, DataError, KardiaError
from kardia_jax.jsonio import append_jsonl, read_jsonl
from kardia_jax.models.checkpoint import publish_dir
from kardia_jax.rl import rollout
from kardia_jax.sampling import SamplingConfig

SELECTION_LOG = "selection.jsonl"
BEST_DIR = os.path.join("best", "hf")
LAST_DIR = os.path.join("last", "hf")


def check_select(scfg: ConfigDict) -> None:
    """Refuses impossible `select.*` settings, naming the field."""
    if int(scfg.every) < -1:
        raise ConfigError(f"select.every={scfg.every}: need -1 (every epoch), 0 (off) or >= 1")
    if not scfg.every:
        return
    if not 0.0 < float(scfg.heldout_fraction) < 1.0:
        raise ConfigError(
            f"select.heldout_fraction={scfg.heldout_fraction}: need a fraction in (0, 1) of "
            f"the profiles (or select.every=0: no selection)"
        )
    if int(scfg.prompts) < 1:
        raise ConfigError(f"select.prompts={scfg.prompts}: need >= 1")
    if int(scfg.max_new_tokens) < 0:
        raise ConfigError(f"select.max_new_tokens={scfg.max_new_tokens}: need >= 0")
    try:
        SamplingConfig(temperature=float(scfg.temperature))
    except ConfigError as e:
        raise ConfigError(f"select.{e}") from None


def heldout_split(dialogues, fraction: float, seed: int, source: str):
    """(trained on, held out): the dialogues of round(fraction x profiles) profiles are
    held out (`data.splits.profile_split`), so no held-out profile is trained on."""
    try:
        return profile_split(dialogues, fraction, seed=seed)
    except DataError as e:
        raise DataError(f"{source}: select.heldout_fraction: {e}") from None


def scoring_interval(scfg: ConfigDict, steps_per_epoch: int) -> int:
    """Steps between scorings: 0 off, `select.every`, or one epoch for -1."""
    every = int(scfg.every)
    return max(1, steps_per_epoch) if every < 0 else every


@dataclasses.dataclass
class Best:
    """What the history says so far: the baseline (step 0) and the best candidate."""

    step: int | None = None
    score: float = -math.inf
    baseline: float | None = None

    def beaten_by(self, step: int, score: float) -> bool:
        # Candidates are RL steps; the starting policy is the reference point only.
        return step >= 1 and score > self.score  # ties keep the earlier step


def read_history(path: str, upto: int) -> Best:
    """The best so far from `path`'s rows up to step `upto` (a resumed run's history;
    rows past it were written after the restored checkpoint and are dropped). Every host
    reads it, maybe before process 0 has cut a torn last line: it is left out."""
    best = Best()
    for row in read_jsonl(path):
        step, score = int(row["step"]), float(row["score"])
        if step > upto:
            continue
        if step == 0:
            best.baseline = score
        elif best.beaten_by(step, score):
            best.step, best.score = step, score
    return best


def fixed_subset(n: int, k: int, seed: int) -> np.ndarray:
    """k of range(n) (all when k >= n), drawn once from `seed`, in order."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def copy_hf_dir(src: str, dst: str) -> None:
    """`dst` becomes a copy of the checkpoint dir `src`, swapped in through a temporary
    dir like `save_hf_model` does. Files are hard links where the filesystem allows:
    `save_hf_model` never rewrites a file in place (it renames a new dir over the old),
    so a link never changes under the other name. Process 0 only."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    publish_dir(dst, lambda tmp: shutil.copytree(src, tmp, copy_function=link, dirs_exist_ok=True))


def _agreed(score: float) -> float:
    """Process 0's score on every host: each host computed the same one, but the export
    that follows is collective (every host gathers), so they must not disagree."""
    if jax.process_count() == 1:
        return score
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float64(score)))


class Selector:
    """Scores the policy on the held-out prompts and keeps the best step's export.

    `sampler` is the rollouts' `Sampler` (it holds the current weights); `reward_fn`
    the rollouts' reward. Every host calls `__call__` at the same steps; process 0
    writes the history."""

    def __init__(
        self,
        *,
        examples: Sequence,
        scfg: ConfigDict,
        workdir: str,
        sampler,
        tokenizer,
        stop_ids,
        reward_fn,
        judge,
        max_new_tokens: int,
        batch: int,
        seed: int,
        start: int,
        compile_count: Callable[[], int] = lambda: 0,
    ):
        self.examples = examples
        self.index = fixed_subset(len(examples), int(scfg.prompts), seed)
        self.sampler, self.tokenizer, self.stop_ids = sampler, tokenizer, stop_ids
        self.reward_fn, self.judge = reward_fn, judge
        self.max_new_tokens = int(scfg.max_new_tokens) or max_new_tokens
        self.sampling = SamplingConfig(temperature=float(scfg.temperature))
        self.batch, self.seed = batch, seed
        self.compile_count = compile_count
        self.main = jax.process_index() == 0
        self.log_path = os.path.join(workdir, SELECTION_LOG)
        self.best_dir = os.path.join(workdir, BEST_DIR)
        # A fresh run (start 0) scores its baseline again; a resumed one continues from
        # the rows up to its checkpoint.
        self.best = read_history(self.log_path, start) if start else Best()
        if self.best.step is not None and not os.path.isfile(
            os.path.join(self.best_dir, "config.json")
        ):
            raise KardiaError(
                f"{self.log_path}: step {self.best.step} is the best so far, but "
                f"{self.best_dir} is missing; restore it or start a new workdir"
            )

    def score(self, step: int) -> dict:
        """Mean reward (and each component's) of the policy's answers to the held-out
        prompts, in batches of the rollouts' size."""
        t0, built = time.perf_counter(), self.compile_count()
        if self.judge is not None:
            self.judge.reset()
        texts, parts = [], []
        for k, lo in enumerate(range(0, len(self.index), self.batch)):
            index = self.index[lo : lo + self.batch]
            prompts = [self.examples[i].prompt_ids.tolist() for i in index]
            seed = int(np.random.SeedSequence([self.seed, step, k]).generate_state(1)[0])
            comp = self.sampler(prompts, self.max_new_tokens, self.sampling, seed=seed)
            chunk = rollout.decode_completions(
                self.tokenizer, comp.tokens, comp.lengths, self.stop_ids
            )
            parts.append(rollout.score(self.reward_fn, self.examples, index, chunk).components)
            texts += chunk
        row = {"step": step, "prompts": len(texts)}
        for key in parts[0]:
            values = np.concatenate([np.asarray(p[key], np.float64).reshape(-1) for p in parts])
            if values.shape == (len(texts),):
                row[f"reward/{key}"] = float(values.mean())
        row["score"] = _agreed(row["reward/total"])
        if self.judge is not None:
            row["time/judge_s"] = self.judge.seconds
        row["time/total_s"] = time.perf_counter() - t0
        row["compiles"] = self.compile_count() - built  # the greedy programs: first call only
        return row

    def __call__(self, step: int, export: Callable[[str], None]) -> dict:
        """Scores `step`'s policy; a candidate better than the best so far is exported
        by `export(dir)` (called on every host). Returns the history row."""
        row = self.score(step)
        row["candidate"] = step >= 1
        row["best"] = self.best.beaten_by(step, row["score"])
        if step == 0:
            self.best.baseline = row["score"]
            if self.main:
                print(f"selection: baseline (step 0) held-out reward {row['score']:.4f}")
        if row["best"]:
            # Exported before the row is written: a row marked best always has its
            # export on disk (a kill in between re-runs the step from a checkpoint).
            export(self.best_dir)
            if self.main:
                was = "none" if self.best.step is None else f"{self.best.score:.4f}"
                print(
                    f"selection: step {step} held-out reward {row['score']:.4f} is the best "
                    f"so far (was {was}); exported to {self.best_dir}",
                    flush=True,
                )
            self.best.step, self.best.score = step, row["score"]
        if self.main:
            append_jsonl(self.log_path, row)
        return row


def final_exports(
    workdir: str, step: int, selector: Selector | None, export, export_hf: bool
) -> dict:
    """WORKDIR/hf: the best step's policy with selection on (WORKDIR/last/hf the last
    step's), the last step's without. Returns the paths and the selection's outcome
    for the run's summary. Every host calls it (`export` gathers)."""
    hf, last = os.path.join(workdir, "hf"), os.path.join(workdir, LAST_DIR)
    out = {"last_step": step, "hf": None, "last_hf": None, "best_hf": None}
    out.update(best_step=None, best_score=None, baseline_score=None)
    if selector is None:
        if export_hf:
            export(hf)
            out["hf"] = out["last_hf"] = hf
        return out
    best = selector.best
    out.update(best_step=best.step, baseline_score=best.baseline)
    if best.step is not None:
        out.update(best_score=best.score, best_hf=selector.best_dir)
    if not export_hf:
        return out
    main = jax.process_index() == 0
    if best.step == step:
        if main:  # the last step is the best: its export is already on disk
            copy_hf_dir(selector.best_dir, last)
    else:
        export(last)
    if main:
        copy_hf_dir(selector.best_dir if best.step is not None else last, hf)
    out.update(hf=hf, last_hf=last)
    return out
