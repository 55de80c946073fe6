"""The suite's shared run: a tiny SFT policy for GRPO to start from."""

import pytest

from . import harness as h


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory, small_tokenizer):
    workdir = tmp_path_factory.mktemp("faults-sft-policy")
    overrides = {"train.steps": 2, "checkpoint.every": 0, "eval.every": 0}
    h.run(h.sft_args(workdir, small_tokenizer, **overrides))
    return str(workdir / "hf")


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
