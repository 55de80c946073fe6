"""Splits: the paper's easy / hard rule, stage selection with and without verdict rates,
and the profile-disjoint held-out split."""

from __future__ import annotations

import pytest

from kardia_jax.data.schema import parse_record
from kardia_jax.data.splits import (
    paper_difficulty,
    profile_split,
    stage_split,
    verdict_difficulty,
)
from kardia_jax.errors import DataError


@pytest.mark.parametrize(
    ("p_fail", "p_pass", "p_solved", "expected"),
    [
        (0.2, 0.3, 0.5, "easy"),  # fail < pass + solved
        (0.6, 0.1, 0.3, "hard"),  # 0.6 >= 0.4 and 0.7 >= 0.3
        (0.5, 0.0, 0.5, "hard"),  # ties are not "<"
        (0.5, 0.2, 0.3, "hard"),
        (0.45, 0.05, 0.5, "easy"),  # fail + pass < solved
        (0.0, 0.0, 0.0, "hard"),
    ],
)
def test_paper_rule(p_fail, p_pass, p_solved, expected):
    assert paper_difficulty(p_fail, p_pass, p_solved) == expected


def test_stage_split_uses_verdicts_and_keeps_unknowns_for_both(record):
    easy = parse_record({**record, "p_FAIL": 0.1, "p_PASS": 0.5, "p_SOLVED": 0.4})
    hard = parse_record(
        {**record, "verdict_rates": {"p_fail": 0.8, "p_pass": 0.1, "p_solved": 0.1}}
    )
    unknown = parse_record(record)
    assert [verdict_difficulty(d) for d in (easy, hard, unknown)] == ["easy", "hard", None]
    assert stage_split([easy, hard, unknown], "sft") == [easy, unknown]
    assert stage_split([easy, hard, unknown], "grpo") == [hard, unknown]
    with pytest.raises(DataError, match="unknown stage"):
        stage_split([easy], "dpo")
    with pytest.raises(DataError, match="not numbers"):
        verdict_difficulty(parse_record({**record, "p_fail": "x", "p_pass": 1, "p_solved": 0}))


def test_profile_split_is_disjoint_stable_and_sized(sample_dialogues):
    kept, held = profile_split(sample_dialogues, 0.25, seed=0)
    assert len(kept) + len(held) == len(sample_dialogues)
    assert not {d.profile_key for d in kept} & {d.profile_key for d in held}
    assert len({d.profile_key for d in held}) == 4  # round(0.25 * 16)
    again = profile_split(list(reversed(sample_dialogues)), 0.25, seed=0)[1]
    assert {d.profile_key for d in again} == {d.profile_key for d in held}
    other = profile_split(sample_dialogues, 0.25, seed=1)[1]
    assert {d.profile_key for d in other} != {d.profile_key for d in held}
    with pytest.raises(DataError, match="heldout_fraction"):
        profile_split(sample_dialogues, 1.5)
