"""Fixtures for the data tests: the Qwen2.5 tokenizer (loaded once per session), the
bundled sample, and a small valid record that the malformed-input table mutates."""

from __future__ import annotations

import copy

import pytest

from .helpers import BASE_RECORD


@pytest.fixture(scope="session")
def tokenizer():
    from kardia_jax.data.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def sample_dialogues():
    from kardia_jax.data.validate import load_dialogues

    dialogues, report = load_dialogues("sample")
    assert report.clean
    return dialogues


@pytest.fixture(scope="session")
def sample_examples(sample_dialogues, tokenizer):
    from kardia_jax.data.examples import build_examples

    return build_examples(sample_dialogues, tokenizer, max_length=2048)


@pytest.fixture
def record():
    """A fresh deep copy of a valid two-exchange record."""
    return copy.deepcopy(BASE_RECORD)
