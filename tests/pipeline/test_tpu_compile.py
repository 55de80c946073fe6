"""The TPU compiler itself (libtpu's compile-only `v5e:2x2` topology, no chip) compiles
the tiny model's SFT step, GRPO rollout, update and judge scoring with the TPU kernels
chosen from the mesh's devices (the process's own backend is the CPU), and reports
their memory; the splash attention kernel is a Mosaic custom call in the programs."""

import importlib.util

import pytest

from kardia_jax.config_files import load_config
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


@pytest.fixture(scope="module")
def sft_result(small_tokenizer, v5e):
    # One 256 bucket: the smallest shapes the config runs at.
    overrides = [f"--config.data.tokenizer={small_tokenizer}", "--config.data.buckets=(256,)"]
    return compile_check(load_config(SFT, overrides), v5e)


@pytest.fixture(scope="module")
def grpo_result(small_tokenizer, policy_dir, judge_dir, v5e):  # noqa: F811
    overrides = grpo_overrides(small_tokenizer, policy_dir, judge_dir)
    return compile_check(load_config(GRPO, overrides), v5e)


def test_programs_compile_for_tpu_with_memory_figures(sft_result, grpo_result):
    for result in (sft_result, grpo_result):
        assert result["platform"] == "tpu" and result["device_kind"] == "TPU v5 lite"
        assert result["kernels"] == "tpu"  # from the mesh, not jax.default_backend()
        assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        for p in result["programs"]:
            assert p.argument_bytes > 0 and p.peak_bytes > 0, p.name
            assert p.flops > 0, p.name
            # A backward pass always has temporaries; a forward may have none (libtpu
            # 0.0.50, jax 0.12, reports 0 for the log-prob program, 0.0.42 4.3 MB).
            if p.name in ("sft_train_step", "grpo_update_step"):
                assert p.temp_bytes > 0, p.name
    assert [p.name for p in sft_result["programs"]] == ["sft_train_step"]
    assert [p.name for p in grpo_result["programs"]] == GRPO_PROGRAMS
    # FSDP over 4 chips: every collective of the partitioned program is the TPU's.
    update = grpo_result["programs"][GRPO_PROGRAMS.index("grpo_update_step")]
    assert update.custom_calls.get("AsyncCollectiveStart", 0) > 0


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
