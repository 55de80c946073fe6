"""Validation in two modes. `strict`: the first bad record stops the run with a
DataError naming file, line and field. `skip`: bad records (and examples too long to
fit) are skipped and counted per reason, and the report says what was dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from kardia_jax.data.reader import iter_records, resolve_split
from kardia_jax.data.schema import RECORD_REASONS, Dialogue, RecordError, parse_record
from kardia_jax.data.spans import Notation
from kardia_jax.errors import DataError
from kardia_jax.jsonio import write_json

DATA_RECORD = "data.json"  # what each stage read, in its workdir
Mode = Literal["strict", "skip"]
MODES = ("strict", "skip")


@dataclasses.dataclass
class ValidationReport:
    source: str
    mode: Mode = "strict"
    records: int = 0  # records read, bad ones included
    dialogues: int = 0  # records accepted
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: int = 0  # turn-level examples accepted
    examples_skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    truncated: int = 0  # accepted examples whose oldest turns were dropped to fit
    first_error: dict[str, str] = dataclasses.field(default_factory=dict)  # reason -> message
    split: str | None = None  # the named split read, when a stage asked for one
    files: list[str] = dataclasses.field(default_factory=list)  # what that split resolved to

    def __post_init__(self):
        if self.mode not in MODES:
            raise DataError(f"unknown validation mode {self.mode!r}; expected one of {MODES}")

    @property
    def clean(self) -> bool:
        return not self.skipped and not self.examples_skipped

    def reject(self, reason: str, message: str, *, example: bool = False) -> None:
        """Strict: raise. Skip: count the record (or example) under `reason`."""
        assert reason in RECORD_REASONS, reason
        if self.mode == "strict":
            raise DataError(message)
        (self.examples_skipped if example else self.skipped)[reason] += 1
        self.first_error.setdefault(reason, message)

    def summary(self) -> str:
        lines = [
            f"records read: {self.records}, dialogues accepted: {self.dialogues}, "
            f"skipped: {sum(self.skipped.values())}"
        ]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} record(s): {reason} (first: {self.first_error[reason]})")
        lines.append(
            f"examples accepted: {self.examples}, truncated to fit: {self.truncated}, "
            f"skipped: {sum(self.examples_skipped.values())}"
        )
        for reason, n in sorted(self.examples_skipped.items()):
            lines.append(f"  skipped {n} example(s): {reason} (first: {self.first_error[reason]})")
        return "\n".join(lines)


def load_dialogues(
    path: str | Path,
    *,
    mode: Mode = "strict",
    notation: Notation = "special",
    sep: str = "\n",
    split: str | None = None,
    report: ValidationReport | None = None,
) -> tuple[list[Dialogue], ValidationReport]:
    """Reads and checks the records of `split` in `path` (reader.resolve_split: a
    stage always names its split), or every record `path` names when split is None.

    Assistant turns come back re-written in `notation`. Strict mode raises DataError at
    the first bad record; skip mode returns the good ones and counts the rest.
    """
    report = report or ValidationReport(source=str(path), mode=mode)
    if split is not None:
        report.split = split
        report.files = resolve_split(path, split).describe()
    dialogues = []
    for location, raw in iter_records(path, split):
        report.records += 1
        try:
            if isinstance(raw, RecordError):
                raise raw
            dialogue = parse_record(raw, notation=notation, sep=sep, location=location)
        except RecordError as e:
            report.reject(e.reason, e.describe(location))
            continue
        dialogues.append(dialogue)
        report.dialogues += 1
    if report.records == 0:
        raise DataError(f"{path}: no records")
    return dialogues, report


def data_record(report: ValidationReport, parts: dict[str, Sequence]) -> dict:
    """What a stage read, for WORKDIR/<stage>/data.json: the source, split and files,
    and per part (e.g. "train" and "held_out") its dialogue, profile and example
    counts. `parts` maps a name to examples (anything with a `.dialogue`)."""
    out: dict = {
        "source": report.source,
        "split": report.split,
        "files": list(report.files),
        "records": report.records,
        "dialogues": report.dialogues,
        "skipped": dict(report.skipped),
        "examples_skipped": dict(report.examples_skipped),
        "truncated": report.truncated,
    }
    for name, examples in parts.items():
        dialogues = {id(e.dialogue): e.dialogue for e in examples}.values()
        out[name] = {
            "examples": len(examples),
            "dialogues": len(dialogues),
            "profiles": len({d.profile_key for d in dialogues}),
        }
    return out


def write_data_record(workdir: str | Path, record: dict) -> None:
    """WORKDIR/data.json, whole or not at all; on process 0 only (every host reads
    the same data, one writes)."""
    import jax

    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, DATA_RECORD)
    write_json(path, record, indent=1)
