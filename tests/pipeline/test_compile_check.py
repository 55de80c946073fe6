"""`kardia-jax compile-check`: ahead-of-time compiles of every program an SFT, GRPO or
eval run compiles report per-device memory that matches the sharded state and what
stays resident beside it, the JSON holds one object with every program, and an
impossible budget fails cleanly (exit code 2, one message naming the program, the
figure and the budget)."""

import inspect
import json
import os

import jax
import pytest

from kardia_jax.config_files import load_config
from kardia_jax.errors import ConfigError
from kardia_jax.pipeline.compile_check import (
    GIB,
    LOG_PROBS,
    MemoryBudgetExceeded,
    check_budget,
    compile_check,
)
from kardia_jax.train.optim import make_optimizer
from kardia_jax.train.setup import mesh_and_rules, planned_model_config
from kardia_jax.train.state import abstract_train_state, param_bytes_per_device, state_shardings
from tests.factory_helpers import Stop
from tests.train.conftest import REPO, run_cli

SFT = os.path.join(REPO, "kardia_jax", "configs", "sft_tiny.py")
GRPO = os.path.join(REPO, "kardia_jax", "configs", "grpo_tiny.py")
EVAL = os.path.join(REPO, "kardia_jax", "configs", "eval_tiny.py")
GRPO_PROGRAMS = [
    "rollout_prefill",
    "rollout_decode",
    "select_prefill",  # grpo_tiny scores held-out prompts (select.every = 2)
    "select_decode",
    "grpo_log_probs (reference / old policy)",
    "grpo_update_step",
    "judge_scoring",
]


@pytest.fixture(scope="module")
def policy_dir(small_tokenizer, tmp_path_factory):
    """The tiny SFT policy's config.json and tokenizer: no weights."""
    from kardia_jax.data.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("policy")
    sft = load_config(SFT, [f"--config.data.tokenizer={small_tokenizer}"])
    cfg = planned_model_config(sft.model, _vocab(small_tokenizer))
    (path / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    load_tokenizer(small_tokenizer).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny Qwen3-shaped judge and the short test rubric (prompts of ~250 tokens)."""
    from tests.rewards.helpers import TEST_RUBRIC_TEXT, random_model

    root = tmp_path_factory.mktemp("judge")
    random_model(str(root / "ckpt"))
    (root / "rubric.txt").write_text(TEST_RUBRIC_TEXT)
    return str(root)


def grpo_overrides(small_tokenizer, policy_dir, judge_dir):
    return [
        f"--config.data.tokenizer={small_tokenizer}",
        f"--config.model.path={policy_dir}",
        f"--config.reward.judge_path={judge_dir}/ckpt",
        "--config.reward.rubric=0.5",
        f"--config.reward.judge.rubric={judge_dir}/rubric.txt",
        "--config.reward.judge.length_buckets=(512,)",
    ]


def eval_overrides(small_tokenizer, policy_dir, judge_dir):
    return [
        f"--config.data.tokenizer={small_tokenizer}",
        f"--config.model.path={policy_dir}",
        f"--config.judge.path={judge_dir}/ckpt",
        f"--config.judge.rubric={judge_dir}/rubric.txt",
        "--config.judge.length_buckets=(512,)",
    ]


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


def test_grpo_tiny_compiles_every_program_with_what_stays_resident(
    small_tokenizer, policy_dir, judge_dir
):
    config = load_config(GRPO, grpo_overrides(small_tokenizer, policy_dir, judge_dir))
    result = compile_check(config)
    assert result["kernels"] == "cpu" and result["run"] == "grpo"
    programs = {p.name: p for p in result["programs"]}
    assert list(programs) == GRPO_PROGRAMS
    assert all(p.peak_bytes > 0 and p.flops > 0 for p in programs.values())
    prefill, decode, logp, update, judge = (
        programs[k]
        for k in (
            "rollout_prefill",
            "rollout_decode",
            LOG_PROBS,
            "grpo_update_step",
            "judge_scoring",
        )
    )
    # The update holds the optimizer state too; the log-prob forward only the params.
    assert update.argument_bytes > 2 * logp.argument_bytes
    # beta > 0: the frozen reference stays on the devices, and the judge's parameters
    # (on the same mesh) stay throughout; the update's arguments are the train state.
    assert config.grpo.beta > 0
    mesh, rules = mesh_and_rules(config)
    cfg = planned_model_config(config.model, _vocab(small_tokenizer))
    tx = make_optimizer(config.train, 10)
    _, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    state = param_bytes_per_device(abstract, shardings)
    params = param_bytes_per_device(abstract.params, shardings.params)
    assert state <= update.argument_bytes < state * 1.05
    # Beside each program: train state + reference + judge, less its own arguments.
    assert logp.resident_bytes - update.resident_bytes == state - params
    assert judge.resident_bytes - update.resident_bytes > state - params  # judge < policy
    judge_params = update.resident_bytes - params
    # Its arguments: the judge's parameters and at most its whole input (16 x 512 ids
    # and mask, the rubric head and the five dimension suffixes).
    assert 0 < judge_params < judge.argument_bytes < judge_params + 16 * 512 * 8 + 4096
    # The sampler decodes the train state's parameters: the rest of the state, the
    # reference and the judge beside it; the decode takes (and donates) the cache.
    # Selection answers held-out prompts with the same sampler: the same beside it.
    for name in ("rollout_decode", "select_prefill", "select_decode"):
        assert programs[name].resident_bytes == prefill.resident_bytes, name
    assert prefill.resident_bytes == logp.resident_bytes
    assert decode.alias_bytes > 0 and decode.argument_bytes > prefill.argument_bytes
    # 4 prompts x G 4 (the sampler pads the 4 prompts to the 8 data shards), the 512
    # bucket, 32 new tokens; the judge at one warm batch of 16.
    assert prefill.shapes.startswith("8 prompts x 512 tokens, 4 rows each, 32 new tokens")
    assert logp.shapes.startswith("16 rollouts") and update.shapes.startswith("16 rollouts")
    assert judge.shapes.startswith("16 candidates")
    # Without the rubric in the reward the driver loads no judge: nothing to compile.
    names = [
        p.name
        for p in compile_check(
            load_config(
                GRPO,
                [f"--config.data.tokenizer={small_tokenizer}", f"--config.model.path={policy_dir}"],
            )
        )["programs"]
    ]
    assert names == GRPO_PROGRAMS[:-1]


def test_the_judge_compiles_at_the_batch_its_calls_pad_to(small_tokenizer, policy_dir, judge_dir):
    """`reward.judge.max_batch` caps the judge's batch (`RubricJudge.warm_batch`):
    compile-check compiles scoring at that batch, not at the rollout count, and its
    memory shrinks with it."""
    overrides = grpo_overrides(small_tokenizer, policy_dir, judge_dir)
    full = compile_check(load_config(GRPO, overrides))["programs"][-1]
    capped = compile_check(load_config(GRPO, overrides + ["--config.reward.judge.max_batch=8"]))
    judge = capped["programs"][-1]
    assert judge.name == full.name == "judge_scoring"
    assert full.shapes.startswith("16 candidates") and judge.shapes.startswith("8 candidates")
    assert judge.temp_bytes < full.temp_bytes


class SamplerBuckets:
    """Spies on `Sampler.programs`, the one builder of every prefill and decode: keeps
    each call's (batch, prompt length, budget, sampling, group); with `stop` set,
    raises `Stop` there instead (a driver's call then compiles and runs nothing)."""

    def __init__(self, monkeypatch):
        from kardia_jax.sampling import Sampler

        self.calls, self.stop = [], False
        real = Sampler.programs
        signature = inspect.signature(real)

        def spy(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.calls.append(tuple(bound.arguments.values())[1:])
            if self.stop:
                raise Stop
            return real(*args, **kwargs)

        monkeypatch.setattr(Sampler, "programs", spy)


def test_selection_compiles_the_programs_the_selector_calls(
    small_tokenizer, policy_dir, tmp_path, monkeypatch
):
    """With `select.every` on, the held-out answers' prefill and decode compile at the
    (batch, prompt, budget, sampling, group) that the driver's Selector asks its
    sampler for; with it off, they are not compiled."""
    import types

    import numpy as np

    from kardia_jax.data.tokenizer import load_tokenizer
    from kardia_jax.models import abstract_model
    from kardia_jax.rl import grpo
    from kardia_jax.sampling import Sampler

    base = [f"--config.data.tokenizer={small_tokenizer}", f"--config.model.path={policy_dir}"]
    # More prompts than a rollout's 16 rows, a budget and a temperature of its own:
    # each differs from the rollouts' settings.
    selection = ["--config.select.prompts=40", "--config.select.max_new_tokens=48"]
    config = load_config(GRPO, [*base, *selection, "--config.select.temperature=0.7"])
    spy = SamplerBuckets(monkeypatch)
    programs = {p.name: p for p in compile_check(config)["programs"]}
    assert list(programs) == GRPO_PROGRAMS[:-1]  # no rubric: no judge
    _, select_call = spy.calls
    for name in ("select_prefill", "select_decode"):
        p = programs[name]
        # 16 prompts a call (the rollouts' rows), one row each, 48 -> the 64 budget.
        assert p.shapes.startswith("16 prompts x 512 tokens, 1 rows each, 64 new tokens")
        assert p.peak_bytes > p.resident_bytes > 0 and p.flops > 0
    assert programs["select_decode"].alias_bytes > 0  # the cache, donated
    # The driver's Selector (`grpo._selector`) on a sampler built as `start_run` builds
    # it, scoring held-out prompts of data.max_length tokens.
    tokenizer = load_tokenizer(small_tokenizer)
    mesh, rules = mesh_and_rules(config)
    sampler = Sampler(
        abstract_model(planned_model_config(config.model, len(tokenizer))),
        eos_ids=(),
        mesh=mesh,
        rules=rules,
        prompt_buckets=grpo.prompt_buckets(config),
    )
    run = types.SimpleNamespace(
        config=config,
        workdir=str(tmp_path),
        sampler=sampler,
        tokenizer=tokenizer,
        stop_ids=(),
        reward_fn=None,
        judge=None,
        start=0,
        compiles=types.SimpleNamespace(count=0),
    )
    prompt = types.SimpleNamespace(prompt_ids=np.ones(int(config.data.max_length), np.int32))
    spy.calls.clear()
    spy.stop = True
    with pytest.raises(Stop):
        grpo._selector(run, [prompt] * 64).score(1)
    assert spy.calls == [select_call]
    # Selection off: neither program.
    spy.stop = False
    off = compile_check(load_config(GRPO, [*base, "--config.select.every=0"]))["programs"]
    assert [p.name for p in off] == [n for n in GRPO_PROGRAMS[:-1] if not n.startswith("select")]


def test_a_generate_mode_judge_compiles_its_sampler(
    small_tokenizer, policy_dir, judge_dir, monkeypatch
):
    """`mode = "generate"` judges decode an answer and parse it: compile-check compiles
    the judge's sampler prefill and decode at the bucket the driver's judge asks its
    sampler for, beside the scoring program a reply it cannot parse falls back to, for
    the GRPO reward judge and the eval judge."""
    from kardia_jax.rewards import JudgeContext
    from kardia_jax.rl import grpo

    overrides = grpo_overrides(small_tokenizer, policy_dir, judge_dir)
    config = load_config(
        GRPO, [*overrides, "--config.reward.judge.mode=generate", "--config.select.every=0"]
    )
    spy = SamplerBuckets(monkeypatch)
    programs = {p.name: p for p in compile_check(config)["programs"]}
    judge_names = ["judge_prefill", "judge_decode", "judge_scoring"]
    assert list(programs)[-3:] == judge_names and "select_prefill" not in programs
    judge_call, _ = spy.calls  # the judge compiles first (its bytes stay beside the rest)
    prefill, decode, scoring = (programs[k] for k in judge_names)
    # The rollouts' 16 candidates a call (max_batch 32), prompts in the 512 bucket (the
    # prompt limit, the one length bucket), the default 96 new tokens -> 128 budget.
    assert prefill.shapes.startswith("16 prompts x 512 tokens, 1 rows each, 128 new tokens")
    assert scoring.shapes.startswith("16 candidates") and "cannot parse" in scoring.shapes
    # Memory: both take the judge's parameters (the inputs differ by at most 16 x 512
    # ids and masks, the rubric head and suffixes); the decode takes and donates the
    # cache; the policy's state, not the judge, is resident beside them.
    assert abs(prefill.argument_bytes - scoring.argument_bytes) < 16 * 512 * 8 + 4096
    assert decode.argument_bytes > prefill.argument_bytes and decode.alias_bytes > 0
    assert prefill.resident_bytes == decode.resident_bytes == scoring.resident_bytes > 0
    assert all(p.peak_bytes > p.resident_bytes and p.flops > 0 for p in (prefill, decode))
    # The driver's judge (`grpo._load_judge`) judging 16 distinct replies to one
    # context, each long enough to reach the 512 bucket.
    mesh, rules = mesh_and_rules(config)
    judge = grpo._load_judge(config, mesh, rules, 16, 512).judge
    replies = [f"reply {i}: " + "that sounds so hard. " * 8 for i in range(16)]
    spy.calls.clear()
    spy.stop = True
    with pytest.raises(Stop):
        judge.evaluate([JudgeContext("a profile", "a situation")] * 16, replies)
    assert spy.calls == [judge_call]

    # The eval judge, on one device: its 16 candidates a call (judge.batch_size).
    spy.stop = False
    config = load_config(
        EVAL,
        [*eval_overrides(small_tokenizer, policy_dir, judge_dir), "--config.judge.mode=generate"],
    )
    result = compile_check(config)["programs"]
    assert [p.name for p in result] == ["eval_prefill", "eval_decode", *judge_names]
    assert result[2].shapes == "16 prompts x 512 tokens, 1 rows each, 128 new tokens"
    assert all(p.resident_bytes == 0 and p.peak_bytes > 0 for p in result)


def test_eval_tiny_compiles_generation_and_judge_on_one_device(
    small_tokenizer, policy_dir, judge_dir
):
    config = load_config(EVAL, eval_overrides(small_tokenizer, policy_dir, judge_dir))
    result = compile_check(config)
    assert result["run"] == "eval" and result["mesh"] == {"single_device": 1}  # sharding ""
    names = [p.name for p in result["programs"]]
    assert names == ["eval_prefill", "eval_decode", "judge_scoring"]
    prefill, decode, judge = result["programs"]
    # 16 prompts of data.max_length 1024, 64 new tokens, one row each; nothing resident.
    assert prefill.shapes == "16 prompts x 1024 tokens, 1 rows each, 64 new tokens"
    assert judge.shapes.startswith("16 candidates")
    assert all(p.resident_bytes == 0 and p.peak_bytes > 0 for p in result["programs"])


def test_grpo_refuses_a_batch_that_does_not_split(small_tokenizer, policy_dir):
    args = [f"--config.data.tokenizer={small_tokenizer}", f"--config.model.path={policy_dir}"]
    with pytest.raises(ConfigError, match="rollout.global_batch=18 .* rollout.group_size=4"):
        compile_check(load_config(GRPO, [*args, "--config.rollout.global_batch=18"]))


def test_topology_names_and_errors():
    from kardia_jax.pipeline.compile_check import parse_topology

    v5p, v5e = parse_topology("v5p:2x2x1"), parse_topology("v5e:2x4")
    assert (v5p.name, v5p.chips, v5p.hbm_gib) == ("v5p-8", 4, 95)  # TensorCores
    assert (v5e.name, v5e.chips, v5e.hbm_gib) == ("v5e-8", 8, 16)  # chips
    assert parse_topology("v4:2x2x2").name == "v4-16"
    assert parse_topology("v6e:2x2").describe() == "v6e-4 (v6e:2x2, 4 chips, 32 GiB HBM/chip)"
    for bad in ("v5p:2x2", "v5e:2x2x1", "v3:2x2", "v5litepod-8"):
        with pytest.raises(ConfigError, match=r"expected one of v4:AxBxC, v5p:AxBxC"):
            parse_topology(bad)


def test_cli_json_is_one_object_with_every_program(small_tokenizer, policy_dir, judge_dir):
    proc = run_cli(
        ["compile-check", "--config", GRPO, "--devices", "2", "--json"]
        + grpo_overrides(small_tokenizer, policy_dir, judge_dir),
        env_extra={"XLA_FLAGS": ""},
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    result = json.loads(out)  # the whole of stdout
    assert [p["name"] for p in result["programs"]] == GRPO_PROGRAMS
    assert result["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    for p in result["programs"]:
        assert p["peak_bytes"] == (
            p["argument_bytes"]
            + p["output_bytes"]
            - p["alias_bytes"]
            + p["temp_bytes"]
            + p["resident_bytes"]
        )
        assert isinstance(p["custom_calls"], dict) and p["flops"] > 0


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
    (step_report,) = [p for p in update["programs"] if p.name == "grpo_update_step"]
    assert built == [2] and "microbatches 2" in step_report.shapes
    # 16 completions per update do not split into 3 microbatches: refused, named.
    with pytest.raises(ConfigError, match="train.microbatches=3"):
        compile_check(load_config(GRPO, [*args, "--config.train.microbatches=3"]))


def test_judge_preset_plans_a_judge_without_its_checkpoint(tmp_path):
    """`reward.judge_preset` (no `judge_path`): a shape-only folder that the judge
    loader reads as a checkpoint's config and tokenizer, gone afterwards; a
    `judge_path` is used as it is."""
    import json
    import os

    from ml_collections import ConfigDict

    from kardia_jax.data.tokenizer import read_tokenizer
    from kardia_jax.models import ModelConfig, get_preset
    from kardia_jax.pipeline.compile_check import judge_folder

    reward = ConfigDict(dict(judge_path="", judge_preset="qwen3_8b"))
    with judge_folder(reward) as folder:
        cfg = ModelConfig.from_pretrained(folder)
        assert cfg == get_preset("qwen3_8b").replace(generation_config_json=None)
        assert read_tokenizer(folder).apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False
        )
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["model_type"] == "qwen3"
    assert not os.path.exists(folder)
    reward = ConfigDict(dict(judge_path=str(tmp_path), judge_preset="qwen3_8b"))
    with judge_folder(reward) as folder:
        assert folder == str(tmp_path)
    with judge_folder(ConfigDict(dict(judge_path="", judge_preset=""))) as folder:
        assert folder == ""
