"""The one home of the JSON / JSONL writers: whole files through a temporary name and a
rename (a reader, or a run resumed after a kill, never sees half a file), and logs
appended a line per row. Which process writes stays the caller's decision (process 0
in a multi-host run)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces `path` with `text` in one step: written to `path`.tmp, then renamed."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    default=str,
) -> None:
    """`obj` as a JSON file (UTF-8, newline-terminated), replaced in one step;
    `default=str` writes paths, numpy scalars and the like as their text."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=default)
    write_text(path, text + "\n")


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict] | dict) -> None:
    """Appends one JSON line per row (a dict is one row) and forces them to disk: a
    later kill loses at most a torn last line, which readers drop."""
    rows = [rows] if isinstance(rows, dict) else rows
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
