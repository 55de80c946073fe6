"""The TPU compiler itself (libtpu's compile-only `v5e:2x2` topology, no chip) compiles
the tiny model's SFT step, GRPO rollout, update and judge scoring with the TPU kernels
chosen from the mesh's devices (the process's own backend is the CPU), and reports
their memory; the splash attention kernel is a Mosaic custom call in the programs."""

import importlib.util

import pytest

from kardia_jax.config_files import load_config
from kardia_jax.pipeline import compile_check as compile_check_module
from kardia_jax.pipeline.compile_check import compile_check, topology_devices

from .test_compile_check import (  # noqa: F401  (fixtures)
    GRPO,
    GRPO_PROGRAMS,
    SFT,
    grpo_overrides,
    judge_dir,
    policy_dir,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (the tpu extra)"
)


@pytest.fixture(scope="module")
def v5e():
    return topology_devices("v5e:2x2")


# name -> compiled HLO text of every program the fixtures compile.
HLO: dict[str, str] = {}


def _compile_check(config, devices):
    """compile_check, keeping each compiled program's HLO text (its op metadata names
    the source functions a program was traced from)."""
    compile_program = compile_check_module.compile_program

    def keep(lowered, name):
        compiled = compile_program(lowered, name)
        HLO[name] = compiled.as_text()
        return compiled

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compile_check_module, "compile_program", keep)
        return compile_check(config, devices)


@pytest.fixture(scope="module")
def sft_result(small_tokenizer, v5e):
    # One 256 bucket: the smallest shapes the config runs at.
    overrides = [f"--config.data.tokenizer={small_tokenizer}", "--config.data.buckets=(256,)"]
    return _compile_check(load_config(SFT, overrides), v5e)


@pytest.fixture(scope="module")
def grpo_result(small_tokenizer, policy_dir, judge_dir, v5e):  # noqa: F811
    overrides = grpo_overrides(small_tokenizer, policy_dir, judge_dir)
    return _compile_check(load_config(GRPO, overrides), v5e)


def test_programs_compile_for_tpu_with_memory_figures(sft_result, grpo_result):
    for result in (sft_result, grpo_result):
        assert result["platform"] == "tpu" and result["device_kind"] == "TPU v5 lite"
        assert result["kernels"] == "tpu"  # from the mesh, not jax.default_backend()
        assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        for p in result["programs"]:
            assert p.argument_bytes > 0 and p.peak_bytes > 0, p.name
            assert p.flops > 0, p.name
            # A backward pass holds activations beyond its arguments and outputs. The
            # compiler's peak shows them; its temp figure need not (libtpu 0.0.42 gives
            # 0 for the shared-prompt GRPO update at a 19.8 MB peak, and 0.0.50 gives 0
            # for the log-prob program).
            if p.name in ("sft_train_step", "grpo_update_step"):
                held = p.argument_bytes + p.output_bytes - p.alias_bytes
                assert p.compiler_peak_bytes > held, p.name
            # The TPU compiler's own peak of live buffers, beside our sum of the parts;
            # the budget is held to the larger.
            assert p.compiler_peak_bytes > 0, p.name
            assert p.needed_bytes >= max(p.peak_bytes, p.compiler_peak_bytes), p.name
    assert [p.name for p in sft_result["programs"]] == ["sft_train_step"]
    assert [p.name for p in grpo_result["programs"]] == GRPO_PROGRAMS
    # FSDP over 4 chips: every collective of the partitioned program is the TPU's.
    update = grpo_result["programs"][GRPO_PROGRAMS.index("grpo_update_step")]
    assert update.custom_calls.get("AsyncCollectiveStart", 0) > 0


def test_no_cpu_form_is_in_a_tpu_program(sft_result, grpo_result):
    """The CPU forms (models/kernels.py) leave their source names in the op metadata
    of a program traced through them (`cpu_matmul`, the multiply-reduce decode head
    `step_logits` takes only on CPU, the transposed key cache's writes); none is in
    the programs compiled for the TPU, and the decode state's key cache is laid out
    as the values."""
    names = [p.name for r in (sft_result, grpo_result) for p in r["programs"]]
    assert set(names) <= set(HLO), sorted(set(names) - set(HLO))
    for name in names:
        assert "cpu_matmul" not in HLO[name], name
        assert "_matmul_2d" not in HLO[name], name


def test_splash_attention_is_in_the_sft_step_and_the_prefill(sft_result, grpo_result):
    (step,) = sft_result["programs"]
    prefill = grpo_result["programs"][GRPO_PROGRAMS.index("rollout_prefill")]
    assert step.custom_calls.get("tpu_custom_call", 0) > 0
    assert prefill.custom_calls.get("tpu_custom_call", 0) > 0


def test_a_program_the_compiler_cannot_fit_is_a_budget_failure(v5e):
    """The TPU compiler refuses a program over its chip's HBM outright; compile-check
    reports that as the budget failure (exit 2), naming the program and the
    compiler's figures, not as a traceback."""
    import jax
    import jax.numpy as jnp

    from kardia_jax.pipeline.compile_check import MemoryBudgetExceeded, compile_program

    x = jax.ShapeDtypeStruct(
        (70_000,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(v5e[0])
    )
    # A sort over a materialised 70k x 70k f32 outer product: about 36 GiB of temporaries.
    lowered = jax.jit(lambda x: jnp.sort(jnp.outer(x, x), axis=0)[0]).lower(x)
    with pytest.raises(MemoryBudgetExceeded, match=r"outer_sort does not fit.*HBM"):
        compile_program(lowered, "outer_sort")
