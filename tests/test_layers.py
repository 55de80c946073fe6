"""The package's layers: data, models, train / sampling, rewards, rl / eval, pipeline,
cli. Nothing imports a layer above its own, no module imports another module's
private `_name`, and importing any module starts no JAX backend.

The walker reads the source with `ast` (never imports it), so it sees function-level
imports, which a lazily imported upward edge would otherwise hide until run time.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "kardia_jax"

# Top-level helpers, then one entry per package; a higher number is a higher layer.
# A new top-level module or package fails the walker until it is placed here.
LAYERS: dict[str, int] = {
    "errors": 0,
    "config_files": 0,
    "checks": 0,
    "host": 0,
    "sharding": 0,
    "compiles": 0,
    "jsonio": 0,
    "lazy": 0,
    "data": 1,
    "models": 2,
    "train": 3,
    "sampling": 3,
    "rewards": 4,
    "rl": 5,
    "eval": 5,
    "pipeline": 6,
    "configs": 6,
}
CLI_LAYER = 7
# Command-line modules that are not named cli.py / *_cli.py.
CLI_MODULES = {"cli", "demo", "sampling.chat"}


def module_name(path: Path, root: Path, package: str = PACKAGE) -> str:
    """'kardia_jax.rl.grpo' for root/kardia_jax/rl/grpo.py (a package: its __init__)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    assert parts[0] == package, path
    return ".".join(parts)


def layer_of(module: str, package: str = PACKAGE) -> int | None:
    """The layer of a module of the package (None for the package root, which holds
    only its version and sits below everything)."""
    rest = module.split(".")[1:]
    if not rest:
        return None
    if ".".join(rest) in CLI_MODULES or rest[-1] == "cli" or rest[-1].endswith("_cli"):
        return CLI_LAYER
    if rest[0] not in LAYERS:
        raise AssertionError(f"{module}: not in the layer table; add its package to LAYERS")
    return LAYERS[rest[0]]


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    # `from . import x` in a package's __init__ is relative to the package itself.
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str, root: Path) -> bool:
    path = root / Path(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_edges(path: Path, root: Path, package: str = PACKAGE):
    """(line, imported module, private name or None, importer-local binding) for every
    import of the package in `path`, at any depth of the syntax tree."""
    importer = module_name(path, root, package)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, importer, is_package)
            if not (target == package or target.startswith(package + ".")):
                continue
            for alias in node.names:
                # `from pkg import sub` may name a submodule rather than an attribute.
                sub = f"{target}.{alias.name}"
                is_module = _is_module(sub, root)
                yield (
                    node.lineno,
                    sub if is_module else target,
                    (alias.name if _is_private(alias.name) and not is_module else None),
                )


def _module_bindings(path: Path, root: Path, package: str) -> dict[str, tuple[str, int, bool]]:
    """{local name: (package module, line, aliased)} for every import here that binds a
    module of the package to a name."""
    importer = module_name(path, root, package)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bound: dict[str, tuple[str, int, bool]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + ".") and alias.asname:
                    bound[alias.asname] = (alias.name, node.lineno, True)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, importer, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub.startswith(package + ".") and _is_module(sub, root):
                    name = alias.asname or alias.name
                    bound[name] = (sub, node.lineno, alias.asname is not None)
    return bound


def _private_attributes(path: Path, root: Path, package: str):
    """`module._name` where `module` is a package module bound by an import here."""
    bound = _module_bindings(path, root, package)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _is_private(node.attr)
        ):
            yield node.lineno, bound[node.value.id][0], node.attr


def layer_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """One 'file:line: message' per upward import, cross-module private import or
    one- or two-letter module alias among the package's modules under `root`."""
    problems = []
    for path in sorted((root / package).rglob("*.py")):
        importer = module_name(path, root, package)
        here = layer_of(importer, package)
        where = path.relative_to(root)
        for line, target, private in import_edges(path, root, package):
            there = layer_of(target, package)
            if here is not None and there is not None and there > here:
                problems.append(
                    f"{where}:{line}: {importer} (layer {here}) imports {target} (layer {there})"
                )
            if private and target != importer:
                problems.append(f"{where}:{line}: imports private {target}.{private}")
        for line, target, attr in _private_attributes(path, root, package):
            if target != importer:
                problems.append(f"{where}:{line}: uses private {target}.{attr}")
        # `R.score(...)` says less than `rollout.score(...)`: module aliases get names.
        for name, (target, line, aliased) in _module_bindings(path, root, package).items():
            if aliased and len(name) <= 2:
                problems.append(f"{where}:{line}: {target} imported as {name!r}; name it")
    return problems


def test_no_upward_or_private_imports():
    problems = layer_violations(ROOT)
    assert not problems, "\n".join(problems)


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for d in [tmp_path / PACKAGE, *(tmp_path / PACKAGE).rglob("*")]:
        if d.is_dir() and not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("", encoding="utf-8")
    return tmp_path


def test_walker_names_a_planted_upward_import(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "errors.py": "class KardiaError(Exception): ...\n",
            "data/reader.py": "from kardia_jax.errors import KardiaError\n",
            "models/decoder.py": "import kardia_jax.data.reader\n",
            "rl/grpo.py": "def _logp(): ...\n",
            # A function-level import is an edge too: the one a lazy import hides.
            "data/stats.py": "def f():\n    from kardia_jax.rl.grpo import run\n",
            "rl/cli.py": "from kardia_jax.rl import grpo\n",
            "pipeline/check.py": "from ..rl import grpo\nfrom ..rl.grpo import _logp\n",
            "eval/run.py": "from kardia_jax.rl import grpo\n\nx = grpo._logp\n",
            "eval/report.py": "from kardia_jax.rl import grpo as G\nimport kardia_jax.data.reader as dr\n",
            "eval/table.py": "from kardia_jax.rl import grpo as driver\n",
            "sampling/chat.py": "import kardia_jax.pipeline.check\n",
            "train/step.py": "from kardia_jax.sampling import chat\n",
        },
    )
    problems = layer_violations(root)
    assert problems == [
        "kardia_jax/data/stats.py:2: kardia_jax.data.stats (layer 1) imports "
        "kardia_jax.rl.grpo (layer 5)",
        "kardia_jax/eval/report.py:1: kardia_jax.rl.grpo imported as 'G'; name it",
        "kardia_jax/eval/report.py:2: kardia_jax.data.reader imported as 'dr'; name it",
        "kardia_jax/eval/run.py:3: uses private kardia_jax.rl.grpo._logp",
        "kardia_jax/pipeline/check.py:2: imports private kardia_jax.rl.grpo._logp",
        "kardia_jax/train/step.py:1: kardia_jax.train.step (layer 3) imports "
        "kardia_jax.sampling.chat (layer 7)",
    ]


def test_walker_refuses_a_module_outside_the_table(tmp_path):
    root = _fake_package(tmp_path, {"extras/thing.py": "x = 1\n"})
    with pytest.raises(AssertionError, match=r"kardia_jax\.extras: not in the layer"):
        layer_violations(root)


_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import kardia_jax
names = [m.name for m in pkgutil.walk_packages(kardia_jax.__path__, "kardia_jax.")]
for name in names:
    importlib.import_module(name)
from jax._src import xla_bridge
print(json.dumps({"modules": sorted(names), "backends": sorted(xla_bridge._backends)}))
"""


def imported_modules_and_backends(root: Path) -> dict:
    """Imports every module of the package under `root` in a fresh interpreter:
    {"modules": their names, "backends": the JAX backends started by then}."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_module_starts_no_backend():
    """A backend started at import time fixes the platform before a command can choose
    one (compile-check builds TPU programs on a CPU host), so imports must stay lazy."""
    found = imported_modules_and_backends(ROOT)
    # Every module but the package root itself (a folder without __init__.py would
    # be missing here, and so unchecked).
    files = (ROOT / PACKAGE).rglob("*.py")
    expected = sorted({module_name(p, ROOT) for p in files} - {PACKAGE})
    assert found["modules"] == expected
    assert found["backends"] == []


def test_a_module_that_starts_a_backend_is_seen(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "host.py": "x = 1\n",
            "models/eager.py": "import jax.numpy as jnp\n\nONE = jnp.ones(())\n",
        },
    )
    assert imported_modules_and_backends(root) == {
        "modules": ["kardia_jax.host", "kardia_jax.models", "kardia_jax.models.eager"],
        "backends": ["cpu"],
    }


def test_training_halted_lives_with_the_other_errors():
    """The GRPO driver raises the same halt as SFT without importing the SFT driver."""
    from kardia_jax.errors import KardiaError, TrainingHalted

    assert issubclass(TrainingHalted, KardiaError)
    grpo = ROOT / PACKAGE / "rl" / "grpo.py"
    targets = {target for _, target, _ in import_edges(grpo, ROOT)}
    assert "kardia_jax.errors" in targets
    assert "kardia_jax.train.sft" not in targets


def test_split_difficulty_is_an_rl_command(capsys):
    """It samples and scores a policy, so it belongs to the rl CLI, not the data one."""
    from kardia_jax.cli import build_parser

    argv = ["rl", "split-difficulty", "--model", "m", "--data", "sample:train"]
    args = build_parser(argv).parse_args(argv)
    assert (args.rl_command, args.model, args.data) == ("split-difficulty", "m", "sample:train")
    old = ["data", "split-difficulty", "--model", "m", "--data", "sample:train"]
    with pytest.raises(SystemExit):
        build_parser(old).parse_args(old)
    assert "invalid choice: 'split-difficulty'" in capsys.readouterr().err


def test_dead_code_named_by_the_review_stays_gone():
    """Unused since the drivers keep grain's state in the checkpoint and draw no keys
    from the train state: TrainState.rng, the iterator-state file helpers and the
    format-reason counter."""
    import dataclasses

    import kardia_jax.data
    from kardia_jax.data import pipeline
    from kardia_jax.rewards import format as rewards_format
    from kardia_jax.train.state import TrainState

    assert "rng" not in {f.name for f in dataclasses.fields(TrainState)}
    for name in ("save_iterator_state", "restore_iterator"):
        assert not hasattr(pipeline, name) and name not in kardia_jax.data.__all__
    assert not hasattr(rewards_format, "reason_counts")
