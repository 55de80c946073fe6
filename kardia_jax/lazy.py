"""Packages that name their API in `__init__` but import each module only when one
of its names is first used, so a light caller (the span parser, the report) does not
pull in JAX, transformers or grain."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__dir__`, `__all__`) for `package`, where `exports` maps each
    public name to the submodule that defines it."""
    names = sorted(exports)

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
