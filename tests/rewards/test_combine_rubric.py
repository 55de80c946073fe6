"""The paper's reward (1/3 format + 1/3 emotion + 1/3 rubric, rubric = (mean - 1) / 4)
with every component reported, end to end through a judge; and the shipped rubric:
versioned by the hash of its exact text, validated when loaded."""

import hashlib
from importlib import resources

import numpy as np
import pytest

from kardia_jax.errors import ConfigError, DataError
from kardia_jax.rewards import (
    DIMENSIONS,
    KardiaReward,
    RewardWeights,
    Rubric,
    combine_rewards,
    load_rubric,
    rubric_reward,
)
from kardia_jax.rewards.rubric import shipped_rubrics

from .helpers import TEST_RUBRIC_TEXT
from .test_format_emotion import VALID, answer


def test_combine_rewards_paper_weights():
    f = np.array([1.0, 0.0, 1.0, 0.0])
    e = np.array([1.0, 1.0, 0.0, 0.0])
    dims = np.array(
        [[5, 5, 5, 5, 5], [1, 1, 1, 1, 1], [3, 3, 3, 3, 3], [1, 2, 3, 4, 5]], np.float32
    )
    out = combine_rewards(f, e, dims)
    np.testing.assert_allclose(out["rubric"], [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(out["total"], [1.0, 1 / 3, 0.5, 1 / 6], rtol=1e-6)
    np.testing.assert_array_equal(out["rubric/persona_consistency"], [5, 1, 3, 4])
    assert set(out) == {"total", "format", "emotion", "rubric"} | {
        f"rubric/{d}" for d in DIMENSIONS
    }
    assert all(v.dtype == np.float32 and v.shape == (4,) for v in out.values())


def test_combine_rewards_custom_weights_and_errors():
    dims = np.full((2, 5), 4.0)
    out = combine_rewards(
        [1, 0], [0, 1], dims, RewardWeights(format=0.5, emotion=0.25, rubric=0.25)
    )
    np.testing.assert_allclose(out["total"], [0.5 + 0.25 * 0.75, 0.25 + 0.25 * 0.75])
    np.testing.assert_allclose(rubric_reward(dims), 0.75)
    no_judge = combine_rewards([1, 0], [1, 1], None, RewardWeights(rubric=0.0))
    np.testing.assert_allclose(no_judge["total"], [2 / 3, 1 / 3])
    with pytest.raises(ConfigError, match="no rubric scores"):
        combine_rewards([1], [1], None)
    with pytest.raises(DataError, match="shapes disagree"):
        combine_rewards([1, 0], [1], dims)
    with pytest.raises(ConfigError, match=">= 0"):
        RewardWeights(format=-1)
    with pytest.raises(ConfigError, match="needs a judge"):
        KardiaReward(None)


def test_reward_function_end_to_end(marker_judge, contexts):
    completions = [answer("sad"), answer("joyful"), "Sure! " + answer("sad"), "", VALID]
    ctx = [contexts[i % 2] for i in range(len(completions))]
    gold = ["sad", "sad", "sad", "sad", "lonely"]
    reward = KardiaReward.from_mapping({"weights": {"rubric": 1 / 3}}, judge=marker_judge)
    out = reward(completions, ctx, gold)
    dims = marker_judge.score(ctx, completions)
    np.testing.assert_array_equal(out.components["format"], [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(out.components["emotion"], [1, 0, 1, 0, 0])
    expected = ([1, 1, 0, 0, 1] + np.array([1, 0, 1, 0, 0]) + (dims.mean(1) - 1) / 4) / 3
    np.testing.assert_allclose(out.total, expected, rtol=1e-6)
    np.testing.assert_array_equal(out.components["rubric/safety"], dims[:, 4])
    assert out.components["rubric"][3] == 0.0  # empty reply: empty_score 1 on all five
    assert out.metrics["judge/rubric"] == marker_judge.rubric.id
    assert out.metrics["reward/total"] == pytest.approx(expected.mean())
    assert out.metrics["judge/empty"] == 1.0
    # Rubric weight 0: no judge is called at all.
    cheap = KardiaReward(None, RewardWeights(format=0.5, emotion=0.5, rubric=0.0))(
        completions, ctx, gold
    )
    np.testing.assert_allclose(cheap.total, [1, 0.5, 0.5, 0, 0.5])


def test_shipped_rubric_is_versioned_by_its_text():
    assert "v1" in shipped_rubrics()
    rubric = load_rubric("v1")
    raw = (resources.files("kardia_jax.rewards") / "rubrics" / "v1.txt").read_bytes()
    assert rubric.sha256 == hashlib.sha256(raw).hexdigest()
    assert rubric.id == f"v1-{rubric.sha256[:12]}"
    assert rubric.names == ("Relevance", "Fluency", "Empathy", "Persona Consistency", "Safety")
    for name in rubric.names:
        assert f"\n{name}: " in rubric.system  # every dimension has its scale
    assert "<reply_to_evaluate>" in rubric.system and "never an instruction" in rubric.system
    assert rubric.system_text(True).endswith(rubric.reasoning_note)
    edited = Rubric.from_text(raw.decode().replace("strict", "fair"), "v1")
    assert edited.id != rubric.id  # any edit is a new rubric in the logs


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda t: t.replace("@@ reasoning_note", "@@ notes"),
            "unknown or repeated section 'notes'",
        ),
        (lambda t: t.replace("@@ score\n{dimension}:\n", ""), "missing section"),
        (lambda t: t.replace("fluency = Fluency\n", ""), "dimensions must be"),
        (
            lambda t: t.replace(
                "<reply_to_evaluate>\n{candidate}", "<reply_to_evaluate>{candidate}"
            ),
            "line of its own",
        ),
        (lambda t: t.replace("S: {situation}", "S: none"), r"\{situation\} exactly once"),
        (lambda t: "preamble\n" + t, "text before the first"),
        (lambda t: t.replace("{dimension}:", "Score:"), r"needs \{dimension\}"),
    ],
)
def test_rubric_validation(edit, message):
    with pytest.raises(ConfigError, match=message):
        Rubric.from_text(edit(TEST_RUBRIC_TEXT), "bad")


def test_rubric_from_a_file_and_unknown_names(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(TEST_RUBRIC_TEXT, "utf-8")
    assert load_rubric(path).id.startswith("mine-")
    with pytest.raises(ConfigError, match="unknown rubric 'v9'"):
        load_rubric("v9")
