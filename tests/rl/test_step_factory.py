"""compile-check compiles the GRPO programs the driver runs: the update
(`jit_grpo_update`) and the reference / old-policy log-prob forward (`jit_log_probs`)
come from one builder each, with the same loss and `train.*` settings, so the lowered
programs are the same text on compile-check's shapes."""

import pytest

from kardia_jax.pipeline.compile_check import compile_check
from kardia_jax.rl import grpo
from kardia_jax.rl import step as step_module
from kardia_jax.rl.grpo import run_grpo
from tests.factory_helpers import Recorder, Stop

from .test_grpo_config import config


def test_compile_check_compiles_the_drivers_grpo_programs(
    tmp_path, monkeypatch, rl_policy, rl_tokenizer, short_data
):
    def settings():
        return config(
            **{
                "model.path": rl_policy,
                "data.tokenizer": rl_tokenizer,
                "data.path": f"{short_data}:train",
                "data.max_length": 256,
                "data.buckets": (256,),
                "model.vocab_multiple": 8,
                "select.every": 0,
                "export_hf": False,
                # steps x mu x minibatches = compile-check's schedule length (1000): no
                # shape depends on it, but the HLO holds its constants.
                "train.steps": 1000,
                "grpo.mu": 1,
                "grpo.minibatches": 1,
                "grpo.beta": 0.04,
                "train.microbatches": 2,
                "train.max_nonfinite": 3,
            }
        )

    checked_update = Recorder(step_module.jit_grpo_update)
    checked_logp = Recorder(step_module.jit_log_probs)
    monkeypatch.setattr(step_module, "jit_grpo_update", checked_update)
    monkeypatch.setattr(step_module, "jit_log_probs", checked_logp)
    compile_check(settings())

    driven_logp = Recorder(checked_logp.factory)
    driven_update = Recorder(checked_update.factory, stop=True)
    monkeypatch.setattr(grpo, "jit_log_probs", driven_logp)
    monkeypatch.setattr(grpo, "jit_grpo_update", driven_update)
    with pytest.raises(Stop):
        run_grpo(settings(), str(tmp_path / "run"))

    (ours,), (theirs,) = checked_update.built, driven_update.built
    assert ours.kwargs == theirs.kwargs == {"microbatches": 2, "max_nonfinite": 3}
    assert ours.args[2] == theirs.args[2]  # the loss settings
    (args,) = ours.lowered_with
    text = ours.text(*args)
    assert theirs.text(*args) == text
    single = checked_update.factory(*theirs.args, microbatches=1, max_nonfinite=3)
    assert single.lower(*args).as_text() != text

    (ours,), (theirs,) = checked_logp.built, driven_logp.built
    assert ours.args == theirs.args  # (loss, completion length)
    (args,) = ours.lowered_with  # (graphdef, params, input_ids, attention_mask)
    assert theirs.text(*args) == ours.text(*args)
