"""The evaluation workdir's files: append-only JSONL (completions, judge scores)
that survives a kill at any byte, and the manifest of settings that fixed them."""

from __future__ import annotations

import json
import os

from kardia_jax.errors import ConfigError, DataError

# The workdir's readers and writers, re-exported: eval code calls them as
# store.append_jsonl and store.write_text next to the workdir's file names.
from kardia_jax.jsonio import append_jsonl as append_jsonl
from kardia_jax.jsonio import read_jsonl as read_jsonl
from kardia_jax.jsonio import resume_jsonl as resume_jsonl
from kardia_jax.jsonio import write_json as write_json
from kardia_jax.jsonio import write_text as write_text

COMPLETIONS = "completions.jsonl"
SCORES = "judge_scores.jsonl"
MANIFEST = "manifest.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
REPORT_HTML = "report.html"


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
