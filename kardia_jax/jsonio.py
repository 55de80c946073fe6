"""The one home of the JSON / JSONL files: whole files through a temporary name and a
rename (a reader, or a run resumed after a kill, never sees half a file), and logs
appended a line per row, read back and resumed past a kill mid-write. Which process
writes stays the caller's decision (process 0 in a multi-host run)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from kardia_jax.errors import DataError


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


def _scan_jsonl(path: str | os.PathLike) -> tuple[list[tuple[int, str, dict]], int, bytes]:
    """([(line number, text, row)], bytes of the whole lines, the file's bytes). A bad
    line before the last one is corruption, not a torn write: raises naming it."""
    if not os.path.exists(path):
        return [], 0, b""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    # The last element is what follows the final newline: empty, or a torn line.
    whole, tail = lines[:-1], lines[-1]
    last = max((n for n, raw in enumerate(whole, 1) if raw.strip()), default=0)
    rows, good = [], 0
    for n, raw in enumerate(whole, 1):
        if raw.strip():
            try:
                text = raw.decode("utf-8")
                row = json.loads(text)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError as e:  # UnicodeDecodeError is one
                if n == last and not tail.strip():
                    break  # the last line, unparsable: its writer was killed
                raise DataError(
                    f"{os.fspath(path)}:{n}: not a JSON object ({e}); the file is corrupt"
                ) from None
            rows.append((n, text, row))
        good += len(raw) + 1
    # A tail without its newline is torn even when it parses: the writer writes the
    # row and its newline together, and a resumed run writes the row again.
    return rows, good, data


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of an appended JSONL log ([] when there is none), leaving out a torn
    last line (a writer killed mid-line); a bad line before it raises `DataError`
    naming the line. Never edits the file: a report may read a run that is writing."""
    return [row for _, _, row in _scan_jsonl(path)[0]]


def resume_jsonl(
    path: str | os.PathLike, upto: int | None = None, *, key: str = "step"
) -> list[dict]:
    """Makes an appended log ready to append to again after a kill, and returns its
    rows: a torn last line is cut (with a warning naming the cut bytes), and with
    `upto`, rows whose `key` is past it (logged after the checkpoint a run resumes
    from) are dropped, so the resumed run's log equals an uninterrupted one. The file
    is replaced in one step, and only when something changes; a corrupt line before
    the last raises `DataError` and leaves the file as it was. Call it from one process."""
    rows, good, data = _scan_jsonl(path)
    if upto is not None:
        for n, _, row in rows:
            step = row.get(key)
            if not isinstance(step, int) or isinstance(step, bool):
                raise DataError(f"{os.fspath(path)}:{n}: no integer {key!r} field ({step!r})")
        rows = [r for r in rows if r[2][key] <= upto]
    text = "".join(t + "\n" for _, t, _ in rows)
    if good < len(data):
        msg = f"{os.fspath(path)}: cut a torn last line ({len(data) - good} bytes) left by a kill"
        # Printed, not logged: the CLI's user reads it, and a second copy through a
        # root handler some library configured would only repeat it.
        print(f"warning: {msg}", flush=True)
    if text.encode("utf-8") != data:
        write_text(path, text)
    return [row for _, _, row in rows]
