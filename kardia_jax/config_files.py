"""Run settings: config files with `get_config()` returning an
`ml_collections.ConfigDict`, command-line overrides (`--config.train.lr=3e-5`), and
the sharding presets `sharding/NAME.py`.

The configs we ship live in the package (`kardia_jax/configs/`), so an installed
`kardia-jax` finds them from any directory: `--config configs/NAME.py` (or `NAME`)
names a bundled config unless a file of that name exists where the user runs."""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

from ml_collections import ConfigDict

from kardia_jax.errors import ConfigError

BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"


# Folders of bundled run configs: the top level and the per-slice TPU configs.
CONFIG_DIRS = ("", "tpu")


def bundled_configs() -> list[str]:
    return sorted(
        str(Path(d) / p.stem)
        for d in CONFIG_DIRS
        for p in (BUNDLED_CONFIGS / d).glob("*.py")
        if not p.stem.startswith("_")
    )


def resolve_config_file(file: str) -> Path:
    """A config file the user names: an existing path, else a bundled config named
    `NAME`, `NAME.py` or `configs/NAME.py` (relative, as the README writes them;
    `tpu/NAME` and `configs/tpu/NAME.py` for the per-slice TPU configs)."""
    path = Path(file)
    if path.is_file():
        return path
    parent = path.parent
    if not path.is_absolute() and parent.parts[:1] == ("configs",):
        parent = Path(*parent.parts[1:])
    if not path.is_absolute() and str(parent) in (".", *CONFIG_DIRS[1:]):
        bundled = BUNDLED_CONFIGS / parent / f"{path.name.removesuffix('.py')}.py"
        if bundled.is_file():
            return bundled
    raise ConfigError(
        f"config file {file!r} does not exist (bundled configs: {', '.join(bundled_configs())})"
    )


def _load_module(path: Path, what: str):
    spec = importlib.util.spec_from_file_location(f"_kardia_cfg_{path.stem}", path)
    if spec is None or not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: no get_config() function")
    return module


def load_config(path: str, overrides: list[str] = ()) -> ConfigDict:
    """`path` may carry an argument after a colon (`configs/sft.py:tiny`), passed to
    `get_config(arg)` as big_vision does."""
    file, _, arg = str(path).partition(":")
    file = resolve_config_file(file)
    module = _load_module(file, "config file")
    config = module.get_config(arg) if arg else module.get_config()
    config.config_file = os.path.abspath(file)
    apply_overrides(config, overrides)
    return config


def _parse_value(key: str, text: str, current):
    if isinstance(current, str) or current is None:
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text}: expected true or false")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{key}={text}: cannot parse the value") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, type(current)):
        raise ConfigError(
            f"--config.{key}={text}: expected {type(current).__name__}, got {type(value).__name__}"
        )
    return value


def apply_overrides(config: ConfigDict, overrides: list[str]) -> None:
    for item in overrides:
        item = item.removeprefix("--config.")
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--config.{item}: expected --config.KEY=VALUE")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node, ConfigDict) or p not in node:
                raise ConfigError(f"--config.{key}: unknown setting {p!r}")
            node = node[p]
        if not isinstance(node, ConfigDict) or leaf not in node:
            raise ConfigError(f"--config.{key}: unknown setting {leaf!r}")
        current = node[leaf]
        if isinstance(current, ConfigDict):
            raise ConfigError(f"--config.{key}: is a group of settings, not a value")
        with node.unlocked():
            node[leaf] = _parse_value(key, text, current)


def sharding_preset(name: str, config_file: str | None = None) -> ConfigDict:
    """Loads `sharding/NAME.py`, looked up next to the run's config file, then among
    the bundled configs."""
    dirs = []
    if config_file:
        dirs.append(Path(config_file).resolve().parent / "sharding")
    dirs.append(BUNDLED_CONFIGS / "sharding")
    for d in dirs:
        if (d / f"{name}.py").is_file():
            return _load_module(d / f"{name}.py", "sharding preset").get_config()
    known = sorted(
        {p.stem for d in dirs if d.is_dir() for p in d.glob("*.py") if not p.stem.startswith("_")}
    )
    raise ConfigError(f"sharding={name!r}: unknown sharding preset (known: {', '.join(known)})")
