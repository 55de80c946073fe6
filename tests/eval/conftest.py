"""Fixtures for the evaluation tests: a tiny random policy saved beside its
byte-level tokenizer (the reward tests' builders), a judge stub whose scores the
test sets, and eval configs from configs/eval_tiny.py."""

import os

import numpy as np
import pytest

from kardia_jax.config_files import load_config
from kardia_jax.rewards.rubric import DIMENSIONS

from ..rewards.helpers import _config, numpy_model
from ..sampling.conftest import char_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL_TINY = os.path.join(REPO, "kardia_jax", "configs", "eval_tiny.py")


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A 1-layer llama-shaped random policy (vocabulary = its tokenizer's)."""
    from kardia_jax.models import save_hf_model

    path = str(tmp_path_factory.mktemp("eval_policy") / "hf")
    save_hf_model(numpy_model(_config(), seed=3, std=0.5), path, tokenizer=char_tokenizer())
    return path


def eval_config(**overrides):
    base = {"eval.limit": 8, "eval.max_new_tokens": 8, "eval.bootstrap": 200}
    base.update(overrides)
    return load_config(EVAL_TINY, [f"--config.{k}={v}" for k, v in base.items()])


class StubJudge:
    """`evaluate(contexts, completions)` with scores set by the test: a completion's
    scores are `table[completion text]`; every call is recorded."""

    name = "stub-judge"

    def __init__(self, table: dict[str, tuple[float, ...]]):
        self.table = table
        self.calls: list[list[str]] = []

    def evaluate(self, contexts, completions):
        assert len(contexts) == len(completions)
        self.calls.append(list(completions))

        class Result:
            scores = np.asarray([self.table[c] for c in completions], np.float32)

        assert Result.scores.shape == (len(completions), len(DIMENSIONS))
        return Result()
