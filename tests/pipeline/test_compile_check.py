"""`kardia-jax compile-check`: ahead-of-time compiles of the SFT and GRPO steps report
per-device memory that matches the sharded state, and an impossible budget fails
cleanly (exit code 2, one message naming the figure and the budget)."""

import json
import os

import jax
import pytest

from kardia_jax.config_files import load_config
from kardia_jax.errors import ConfigError
from kardia_jax.pipeline.compile_check import (
    GIB,
    MemoryBudgetExceeded,
    check_budget,
    compile_check,
)
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.setup import mesh_and_rules, planned_model_config
from kardia_jax.train.state import abstract_train_state, param_bytes_per_device, state_shardings
from tests.train.conftest import REPO, run_cli

SFT = os.path.join(REPO, "kardia_jax", "configs", "sft_tiny.py")
GRPO = os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py")


def _vocab(tokenizer_dir):
    from kardia_jax.data.tokenizer import load_tokenizer

    return len(load_tokenizer(tokenizer_dir))


def _state_bytes(config, vocab):
    """Bytes of parameters + optimizer state per device, from shapes alone."""
    mesh, rules = mesh_and_rules(config)
    cfg = planned_model_config(config.model, vocab)
    tx = make_optimizer(config.train, 10)
    _, abstract = abstract_train_state(cfg, tx, mesh, rules)
    return param_bytes_per_device(abstract, state_shardings(abstract, tx, mesh, rules))


def test_sft_tiny_reports_memory_of_the_sharded_state(small_tokenizer):
    config = load_config(SFT, [f"--config.data.tokenizer={small_tokenizer}"])
    result = compile_check(config)
    assert result["mesh"]["fsdp"] == len(jax.devices()) == 8
    (p,) = result["programs"]
    state = _state_bytes(config, _vocab(small_tokenizer))
    # The arguments are the state shard (and the batch shard); the donated state is
    # aliased into the outputs, so it is counted once at the peak.
    assert state <= p.argument_bytes < state * 1.05
    assert p.alias_bytes >= state * 0.99
    assert p.temp_bytes > 0 and p.peak_bytes > p.argument_bytes
    assert p.flops > 0 and p.estimate_flops > 0

    # Twice the rows per device: more temporaries, the same state shard.
    bigger = compile_check(
        load_config(
            SFT, [f"--config.data.tokenizer={small_tokenizer}", "--config.train.global_batch=16"]
        )
    )["programs"][0]
    assert bigger.argument_bytes == pytest.approx(p.argument_bytes, rel=0.05)
    assert bigger.temp_bytes > 1.5 * p.temp_bytes


def test_grpo_tiny_compiles_update_and_log_probs(small_tokenizer, tmp_path):
    sft = load_config(SFT, [f"--config.data.tokenizer={small_tokenizer}"])
    cfg = planned_model_config(sft.model, _vocab(small_tokenizer))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_config()))  # no weights
    config = load_config(
        GRPO,
        [f"--config.data.tokenizer={small_tokenizer}", f"--config.model.path={tmp_path}"],
    )
    programs = compile_check(config)["programs"]
    names = [p.name for p in programs]
    assert names == ["grpo_update_step", "grpo_log_probs (reference / old policy)"]
    assert all(p.peak_bytes > 0 and p.flops > 0 for p in programs)
    # The update holds the optimizer state too; the log-prob forward only the params.
    assert programs[0].argument_bytes > 2 * programs[1].argument_bytes
    # beta > 0: the frozen reference's parameters stay on the devices throughout.
    assert config.grpo.beta > 0
    update, logp = programs
    assert update.resident_bytes == pytest.approx(logp.argument_bytes, rel=0.05)
    assert logp.resident_bytes == pytest.approx(update.argument_bytes, rel=0.05)
    # rollout.global_batch counts completions (4 prompts x G 4): the log-prob pass takes
    # them all, each of the grpo.minibatches updates its share.
    assert config.rollout.global_batch == 16
    assert update.shapes.startswith("16 rollouts") and logp.shapes.startswith("16 rollouts")
    halves = compile_check(
        load_config(
            GRPO,
            [
                f"--config.data.tokenizer={small_tokenizer}",
                f"--config.model.path={tmp_path}",
                "--config.grpo.minibatches=2",
            ],
        )
    )["programs"]
    assert halves[0].shapes.startswith("8 rollouts") and halves[1].shapes.startswith("16 ")
    with pytest.raises(ConfigError, match="rollout.global_batch=18 .* rollout.group_size=4"):
        compile_check(
            load_config(
                GRPO,
                [
                    f"--config.data.tokenizer={small_tokenizer}",
                    f"--config.model.path={tmp_path}",
                    "--config.rollout.global_batch=18",
                ],
            )
        )


def test_budget_check_names_the_program_and_the_budget():
    from kardia_jax.pipeline.compile_check import ProgramReport

    p = ProgramReport("sft_train_step", "", GIB, GIB, GIB, GIB // 2, 0, 1.0)
    check_budget([p], 2.0, "--budget-gib")  # 1.5 GiB fits
    with pytest.raises(MemoryBudgetExceeded, match=r"needs 1\.500 GiB .* budget of 1 GiB"):
        check_budget([p], 1.0, "--budget-gib")


def test_cli_fails_cleanly_for_an_impossible_budget(small_tokenizer):
    proc = run_cli(
        [
            "compile-check",
            "--config",
            SFT,
            "--devices",
            "2",
            "--budget-gib",
            "1e-6",
            f"--config.data.tokenizer={small_tokenizer}",
        ],
        env_extra={"XLA_FLAGS": ""},
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "{'data': 1, 'fsdp': 2, 'tensor': 1}" in out  # the requested fake devices
    assert "kardia-jax compile-check: error: sft_train_step needs" in out
    assert "over the budget of 1e-06 GiB per device (--budget-gib)" in out
    assert "Traceback" not in out


def test_batch_that_does_not_split_over_the_mesh_is_refused(small_tokenizer):
    from kardia_jax.errors import ConfigError

    config = load_config(
        SFT, [f"--config.data.tokenizer={small_tokenizer}", "--config.train.microbatches=2"]
    )  # 8 rows / 2 microbatches = 4 rows per microbatch over 8 devices
    with pytest.raises(ConfigError, match="not divisible by the data-parallel size 8"):
        compile_check(config)


def test_grpo_update_is_compiled_with_train_microbatches(small_tokenizer, tmp_path, monkeypatch):
    from kardia_jax.rl import step

    sft = load_config(SFT, [f"--config.data.tokenizer={small_tokenizer}"])
    cfg = planned_model_config(sft.model, _vocab(small_tokenizer))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_config()))  # no weights
    built, real = [], step.jit_grpo_update

    def spy(*args, **kwargs):  # the one builder the driver uses too
        built.append(kwargs["microbatches"])
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "jit_grpo_update", spy)
    args = [f"--config.data.tokenizer={small_tokenizer}", f"--config.model.path={tmp_path}"]
    update = compile_check(load_config(GRPO, [*args, "--config.train.microbatches=2"]))
    assert built == [2] and "microbatches 2" in update["programs"][0].shapes
    # 16 completions per update do not split into 3 microbatches: refused, named.
    with pytest.raises(ConfigError, match="train.microbatches=3"):
        compile_check(load_config(GRPO, [*args, "--config.train.microbatches=3"]))
