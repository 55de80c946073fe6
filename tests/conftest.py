"""Test-wide JAX settings: CPU with 8 fake devices (mesh tests), a persistent
compilation cache (each new shape costs a compile), and strict rank promotion."""

import os

FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"

# Must happen before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
# In-process tests are compile-bound (tiny shapes, many programs): LLVM's cheapest
# optimisation level compiles them ~25% faster. It changes scheduling, not float
# semantics (no fast-math). CLI children that run long (tests/train/conftest.run_cli
# with optimize=True) drop it again.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE_FLAG
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from kardia_jax.host import keep_freed_memory, quiet_cpu_host  # noqa: E402

keep_freed_memory()  # as the CLI does, before XLA starts its threads
# As the CLI does: with libtpu and no TPU, its start-up environment (no probe
# warnings; no lockfile, so every pytest-xdist worker can build a TPU topology).
quiet_cpu_host()

import jax  # noqa: E402

_CACHE = os.environ.get(
    "KARDIA_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A ~4k-token byte-level BPE trained on the bundled sample (tests/train/conftest.py)."""
    from tests.train.conftest import build_small_tokenizer

    return build_small_tokenizer(str(tmp_path_factory.mktemp("small_tokenizer")))


# The end-to-end tests run whole CLI processes for tens of seconds each; started
# first, they overlap with the many short tests on the other xdist worker instead of
# forming a long serial tail.
_SLOW_FILES = (
    "test_multiprocess_pipeline.py",  # the longest: three pipelines at once
    "test_pipeline.py",
    "test_sft.py",
    "test_multiprocess.py",
    "test_grpo_driver.py",
    "test_sft_recovery.py",
    "test_grpo_learning.py",
    "test_grpo_run.py",
    "test_grpo_select.py",
    "test_gguf.py",
    "test_gguf_gemma.py",
    "test_restore_mismatch.py",
    "test_resume_weights.py",
    "test_sigterm.py",
    "test_sft_faults.py",
    "test_grpo_faults.py",
)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in _SLOW_FILES)


# The fault-injection suite's summary (tests/faults/): each of its tests notes on its
# report the fault it injected and, once its assertions pass, the outcome. Reports
# reach the controller under xdist with their user_properties, so this is the one
# place that sees every fault.
_FAULTS: list[tuple[dict, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.failed):
        for name, row in report.user_properties:
            if name == "fault":
                _FAULTS.append((row, report.outcome))


def pytest_terminal_summary(terminalreporter):
    if not _FAULTS:
        return
    from tests.faults.harness import SEED

    tr = terminalreporter
    counts = {"survived": 0, "refused": 0, "lost": 0}
    lines = []
    for row, outcome in sorted(_FAULTS, key=lambda x: x[0]["fault"]):
        verdict = row["outcome"] if outcome == "passed" and row["outcome"] else "lost"
        counts[verdict] += 1
        shown = {"survived": "survived", "refused": "refused as designed", "lost": "LOST"}
        lines.append(f"{shown[verdict]:>19}  {row['fault']}: {row['injected']}")
        if row["detail"]:
            lines.append(f"{'':>21}-> {row['detail']}")
    tr.write_sep("=", f"fault injection (KARDIA_JAX_FAULT_SEED={SEED})")
    for line in lines:
        tr.write_line(line)
    tr.write_line(
        f"{len(_FAULTS)} faults injected: {counts['survived']} survived, "
        f"{counts['refused']} refused as designed, {counts['lost']} lost"
    )
