"""Fixtures for the sampler tests: the tiny transformers-written checkpoints of
tests/models (imported by path, so the two conftest modules never shadow each other)
and a left-padded batch of prompts of different lengths."""

import importlib.util
import os

import numpy as np
import pytest

_MODELS_CONFTEST = os.path.join(os.path.dirname(__file__), "..", "models", "conftest.py")
_spec = importlib.util.spec_from_file_location("_kardia_models_conftest", _MODELS_CONFTEST)
models_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models_conftest)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: variant name -> (checkpoint dir, torch model), built once per session."""
    made = {}

    def get(variant: str):
        if variant not in made:
            path = tmp_path_factory.mktemp(f"sampling_{variant}")
            model = models_conftest.build_hf_model(variant)
            model.save_pretrained(path)
            made[variant] = (str(path), model)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def prompts():
    """4 prompts of lengths 5, 9, 13 and 16 (one prompt bucket), ids in [3, 256)."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, 256, n).tolist() for n in (5, 9, 13, 16)]


def _left_pad(prompts, pad_id=0):
    p = max(map(len, prompts))
    ids = np.full((len(prompts), p), pad_id, np.int64)
    mask = np.zeros((len(prompts), p), np.int64)
    for i, row in enumerate(prompts):
        ids[i, p - len(row) :] = row
        mask[i, p - len(row) :] = 1
    return ids, mask


@pytest.fixture(scope="session")
def left_pad():
    """prompts -> [B, P] int64 ids and mask, left-padded to the longest prompt
    (transformers' layout for batched generation)."""
    return _left_pad
