"""compile-check compiles the SFT step the driver runs: both build it through
`jit_train_step`, with the same optimizer and `train.*` settings, so the lowered
programs are the same text on compile-check's shapes."""

import os

import pytest

from kardia_jax.config_files import load_config
from kardia_jax.pipeline.compile_check import compile_check
from kardia_jax.train import sft
from kardia_jax.train import step as step_module
from kardia_jax.train.sft import run_sft
from tests.factory_helpers import Recorder, Stop
from tests.train.conftest import REPO

SFT = os.path.join(REPO, "kardia_jax", "configs", "sft_tiny.py")


def test_compile_check_compiles_the_drivers_sft_step(small_tokenizer, tmp_path, monkeypatch):
    overrides = [
        f"--config.data.tokenizer={small_tokenizer}",
        # The driver's schedule spans train.steps; compile-check's 1000 (no shape
        # depends on it, but the HLO holds its constants).
        "--config.train.steps=1000",
        "--config.train.global_batch=16",
        "--config.train.microbatches=2",
        "--config.train.max_nonfinite=3",
        "--config.train.new_token_lr_scale=10.0",  # the driver's optimizer scales new rows
        "--config.model.remat=full",
        "--config.train.gather_targets=False",
    ]
    config = load_config(SFT, overrides)
    checked = Recorder(step_module.jit_train_step)
    monkeypatch.setattr(step_module, "jit_train_step", checked)
    result = compile_check(config)
    assert result["model"]["remat"] == "full"
    assert "microbatches 2" in result["programs"][0].shapes

    driven = Recorder(step_module.jit_train_step.factory, stop=True)
    monkeypatch.setattr(sft, "jit_train_step", driven)
    with pytest.raises(Stop):
        run_sft(load_config(SFT, overrides), str(tmp_path / "run"))

    (ours,), (theirs,) = checked.built, driven.built
    assert ours.kwargs == theirs.kwargs == {"microbatches": 2, "max_nonfinite": 3}
    (args,) = ours.lowered_with  # compile-check's state and batch, as shapes
    text = ours.text(*args)
    assert theirs.text(*args) == text
    # The settings are in the program: one microbatch lowers to another one.
    single = step_module.jit_train_step.factory(*theirs.args, microbatches=1, max_nonfinite=3)
    assert single.lower(*args).as_text() != text
