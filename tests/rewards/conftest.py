"""Fixtures for the reward tests: judge checkpoints built once per session, judges
on them (float32, the short test rubric, one length bucket), and contexts."""

import pytest

from kardia_jax.rewards import JudgeConfig, JudgeContext, PromptLimits, RubricJudge

from .helpers import LENGTH_BUCKETS, TEST_RUBRIC, marker_model, random_model


@pytest.fixture(scope="session")
def marker_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("marker_judge") / "ckpt")
    marker_model(path)
    return path


@pytest.fixture(scope="session")
def random_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("random_judge") / "ckpt")
    random_model(path)
    return path


def make_judge(path, *, mesh=None, dtype="float32", overrides=None, **settings):
    settings.setdefault("length_buckets", LENGTH_BUCKETS)
    settings.setdefault("max_batch", 8)
    settings.setdefault("limits", PromptLimits(max_candidate_tokens=96))
    return RubricJudge.from_pretrained(
        path,
        JudgeConfig(**settings),
        dtype=dtype,
        mesh=mesh,
        rubric=TEST_RUBRIC,
        **(overrides or {}),
    )


@pytest.fixture(scope="session")
def marker_judge(marker_dir):
    """Unrolled layers (`scan_layers` off), the path `random_judge` does not take."""
    return make_judge(marker_dir, scan_layers=False)


@pytest.fixture(scope="session")
def random_judge(random_dir):
    """Scanned layers (the default): the stacked-cache path of `forward_with_cache`."""
    return make_judge(random_dir)


@pytest.fixture(scope="session")
def contexts():
    return [
        JudgeContext("INFJ; likes hiking and old films.", "My dog died last week.", ()),
        JudgeContext(
            "ESTP; runs a small bakery.",
            "I failed my driving test again.",
            (("user", "I failed again."), ("assistant", "Oh no, how are you feeling?")),
        ),
    ]
