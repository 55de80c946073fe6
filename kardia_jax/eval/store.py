"""The evaluation workdir's files: append-only JSONL (completions, judge scores)
that survives a kill at any byte, and the manifest of settings that fixed them."""

from __future__ import annotations

import json
import os

from kardia_jax.errors import ConfigError, DataError

# The workdir's writers, re-exported: eval code calls them as store.append_jsonl and
# store.write_text next to the workdir's file names.
from kardia_jax.jsonio import append_jsonl as append_jsonl
from kardia_jax.jsonio import write_json as write_json
from kardia_jax.jsonio import write_text as write_text

COMPLETIONS = "completions.jsonl"
SCORES = "judge_scores.jsonl"
MANIFEST = "manifest.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
REPORT_HTML = "report.html"


def read_jsonl(path: str, *, repair: bool = True) -> list[dict]:
    """The rows of an append-only JSONL file. A torn last line (a kill mid-write: no
    final newline, or not JSON) is cut off the file when `repair`; a bad line before
    the last one is corruption, not a torn write, and raises naming the line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    rows, good = [], 0
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, 1):
        last = n == len(lines) or (n == len(lines) - 1 and lines[-1] == b"")
        if not raw.strip():
            if not last:
                good += len(raw) + 1
            continue
        complete = n < len(lines)  # followed by a newline
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError) as e:
            if last:
                break
            raise DataError(f"{path}:{n}: not a JSON object ({e}); the file is corrupt") from None
        if not complete:
            break  # parses, but its newline never made it: treat as torn, write it again
        rows.append(row)
        good += len(raw) + 1
    if good < len(data) and repair:
        os.truncate(path, good)
    return rows


def check_manifest(workdir: str, settings: dict, *, write: bool = True) -> None:
    """Checks the settings that determine the completions against the ones the
    workdir was started with (resuming with other settings would mix completions of
    two configurations in one table), then (with `write`) records them."""
    path = os.path.join(workdir, MANIFEST)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable manifest ({e})") from None
        diff = [k for k in settings if k in old and old[k] != settings[k]]
        if diff:
            shown = "; ".join(f"{k}: was {old[k]!r}, now {settings[k]!r}" for k in diff)
            raise ConfigError(
                f"{path}: this workdir's completions were made with other settings ({shown}); "
                "use a new --workdir, or delete the workdir to start over"
            )
        settings = {**old, **settings}
    if write:
        write_json(path, settings, sort_keys=True, default=None)
