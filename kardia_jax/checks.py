"""Checks a run makes before it spends minutes: the ones shared by every stage's
preflight (a writable folder, an optional package). Each raises a `KardiaError`
whose one-line message says what to do."""

from __future__ import annotations

import contextlib
import os
import tempfile

from kardia_jax.errors import ConfigError, KardiaError, MissingPackageError


def writable_dir(path: str, what: str) -> None:
    """Creates `path` if needed and proves a file can be written and removed there."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kardia-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"{what} {path!r} is not writable ({e.strerror or e}): choose a folder you can write to"
        ) from None


@contextlib.contextmanager
def stage(name: str):
    """Prefixes a failing check's message with the stage it belongs to; turns an
    ImportError (a library feature whose package is missing) into the same one line."""
    try:
        yield
    except KardiaError as e:
        raise type(e)(f"preflight ({name}): {e}") from None
    except ImportError as e:
        missing = f" (install {e.name})" if getattr(e, "name", None) else ""
        raise MissingPackageError(f"preflight ({name}): {e}{missing}") from None
