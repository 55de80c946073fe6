"""Splits: the paper's easy / hard rule (SFT uses easy, GRPO hard) when a record carries
the reviewer's verdict rates, a hook for a model pass-rate split when it does not, and a
profile-disjoint held-out split for evaluation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from kardia_jax.data.schema import Dialogue
from kardia_jax.errors import DataError

Difficulty = Literal["easy", "hard"]
Stage = Literal["sft", "grpo"]
# A function deciding a dialogue's difficulty, or None when it cannot tell. A later issue
# plugs in the model pass-rate split here.
DifficultyFn = Callable[[Dialogue], "Difficulty | None"]
STAGE_DIFFICULTY: dict[str, Difficulty] = {"sft": "easy", "grpo": "hard"}

_VERDICTS = ("p_fail", "p_pass", "p_solved")


def verdict_rates(extra: Mapping) -> tuple[float, float, float] | None:
    """(p_FAIL, p_PASS, p_SOLVED) from a record's extra fields, top-level or under
    `verdict_rates`; key case is ignored. None when the record has none."""
    for source in (extra, extra.get("verdict_rates") or {}):
        if not isinstance(source, Mapping):
            continue
        lowered = {str(k).lower(): v for k, v in source.items()}
        if all(k in lowered for k in _VERDICTS):
            try:
                rates = tuple(float(lowered[k]) for k in _VERDICTS)
            except (TypeError, ValueError) as e:
                raise DataError(f"verdict rates are not numbers: {source}") from e
            return rates  # type: ignore[return-value]
    return None


def paper_difficulty(p_fail: float, p_pass: float, p_solved: float) -> Difficulty:
    """Kardia-R1's rule: easy iff p_FAIL < p_PASS + p_SOLVED or p_FAIL + p_PASS < p_SOLVED."""
    easy = p_fail < p_pass + p_solved or p_fail + p_pass < p_solved
    return "easy" if easy else "hard"


def verdict_difficulty(dialogue: Dialogue) -> Difficulty | None:
    rates = verdict_rates(dialogue.extra)
    return None if rates is None else paper_difficulty(*rates)


def stage_split(
    dialogues: Sequence[Dialogue],
    stage: Stage,
    difficulty_fn: DifficultyFn = verdict_difficulty,
) -> list[Dialogue]:
    """Dialogues for a training stage: easy ones for SFT, hard ones for GRPO. A dialogue
    whose difficulty is unknown (no verdict rates) is usable by both stages."""
    if stage not in STAGE_DIFFICULTY:
        raise DataError(f"unknown stage {stage!r}; expected one of {tuple(STAGE_DIFFICULTY)}")
    want = STAGE_DIFFICULTY[stage]
    return [d for d in dialogues if difficulty_fn(d) in (want, None)]


def _bucket(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def profile_split(
    dialogues: Sequence[Dialogue], heldout_fraction: float, seed: int = 0
) -> tuple[list[Dialogue], list[Dialogue]]:
    """(kept, held_out) with no profile on both sides: round(fraction x profiles) profiles
    (at least one) go to held_out, chosen by hashing each profile key with the seed, so
    the choice does not depend on the order of the dialogues."""
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    profiles = sorted({d.profile_key for d in dialogues}, key=lambda k: _bucket(k, seed))
    if len(profiles) < 2:
        raise DataError(f"a profile-disjoint split needs two profiles, found {len(profiles)}")
    n_held = min(len(profiles) - 1, max(1, round(heldout_fraction * len(profiles))))
    held_profiles = set(profiles[:n_held])
    kept = [d for d in dialogues if d.profile_key not in held_profiles]
    held = [d for d in dialogues if d.profile_key in held_profiles]
    return kept, held


def shared_profiles(train: Sequence[Dialogue], test: Sequence[Dialogue]) -> list[str]:
    """Profile keys found in both splits, sorted (KardiaBench's are disjoint)."""
    return sorted({d.profile_key for d in train} & {d.profile_key for d in test})


def check_profile_overlap(
    train: Sequence[Dialogue], test: Sequence[Dialogue], mode: str, source: str
) -> dict:
    """Counts the profiles the two splits share (and their test dialogues): a
    DataError in strict mode, a count to report in skip mode."""
    shared = shared_profiles(train, test)
    keys = set(shared)
    out = {
        "shared_profiles": len(shared),
        "test_dialogues_with_shared_profile": sum(d.profile_key in keys for d in test),
    }
    if shared and mode == "strict":
        shown = ", ".join(repr(k[:40]) for k in shared[:3])
        raise DataError(
            f"{source}: {len(shared)} profile(s) appear in both train and test ({shown}"
            f"{' ...' if len(shared) > 3 else ''}): the test score would measure memory, not "
            "generalisation; make the splits profile-disjoint (data mode 'skip' only reports it)"
        )
    return out
