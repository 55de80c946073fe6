"""Reads KardiaBench records as published: JSON Lines, a JSON array, parquet, a folder of
those, the bundled sample, or a `datasets` hub id. A stage reads one named split
(`resolve_split`): train and test are told apart by file name or an explicit suffix,
never guessed, so test records cannot reach training. Yields each raw record with where it
came from; undecodable bytes and invalid JSON come back as RecordErrors, never raised,
so skip mode can count them and read on.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from kardia_jax.data.schema import RecordError
from kardia_jax.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SAMPLE_NAMES = ("sample", "sample:train", "sample:test")
SPLITS = ("train", "test")  # KardiaBench's two: profile-disjoint, no validation split


def sample_path(split: str = "train") -> Path:
    """The bundled sample (written by us in the KardiaBench schema; no real data)."""
    if split not in ("train", "test"):
        raise DataError(f"the bundled sample has splits train and test, not {split!r}")
    return Path(str(resources.files("kardia_jax.data") / "sample" / f"{split}.jsonl"))


def resolve_paths(path: str | Path) -> list[Path] | None:
    """Files that `path` names, or None when it is no local path (maybe a hub id)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _data_files(p)
        if not files:
            raise DataError(f"{p}: folder holds no {', '.join(SUFFIXES)} files")
        return files
    if str(path) in SAMPLE_NAMES:
        split = str(path).partition(":")[2]
        return [sample_path(s) for s in ([split] if split else ["train", "test"])]
    return None


def _data_files(folder: Path) -> list[Path]:
    # A hub snapshot keeps its split files under data/ (data/train-00000-of-00002.parquet).
    files = sorted(f for f in folder.iterdir() if f.suffix in SUFFIXES and f.is_file())
    sub = folder / "data"
    if not files and sub.is_dir():
        files = sorted(f for f in sub.iterdir() if f.suffix in SUFFIXES and f.is_file())
    return files


def split_of(path: Path) -> str | None:
    """The split a file's name declares: `train.jsonl`, `test.parquet`,
    `train-00000-of-00002.parquet` (a hub shard), or None for any other name."""
    stem = path.name.split(".", 1)[0].lower()
    for split in SPLITS:
        if stem == split or stem.startswith((f"{split}-", f"{split}_")):
            return split
    return None


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """One named split of a data source: its local files, or a hub id and split."""

    spec: str  # what the user passed
    split: str
    files: tuple[Path, ...] = ()
    hub: str | None = None

    def describe(self) -> list[str]:
        return [f"{self.hub}[{self.split}]"] if self.hub else [str(f) for f in self.files]


def resolve_split(spec: str | Path, split: str) -> SplitSource:
    """The files of `split` in the source `spec`, or a DataError saying why the split
    cannot be told apart. Sources: "" / "sample" (the bundled sample), a folder with
    train.* / test.* files, a file named train.* / test.*, any file or folder with an
    explicit ":train" / ":test" suffix, or a hub id (its named splits)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    text = str(spec)
    base, declared = text, None
    if not Path(text).exists():
        head, sep, tail = text.rpartition(":")
        if sep and tail in SPLITS:
            base, declared = head, tail
    if declared is not None and declared != split:
        raise DataError(
            f"{text}: names the {declared} split, and this stage reads {split}: pass the "
            f"{split} data (a folder holding train.* and test.* gives every stage its own)"
        )
    if base in ("", "sample"):
        return SplitSource(text, split, (sample_path(split),))
    p = Path(base)
    if p.is_file():
        found = split_of(p)
        if declared is None and found is None:
            raise DataError(
                f"{p}: cannot tell which split this file is: name it train.* / test.*, or "
                f"pass {p}:train or {p}:test"
            )
        if declared is None and found != split:
            raise DataError(f"{p}: is the {found} split by its name; this stage reads {split}")
        return SplitSource(text, split, (p,))
    if p.is_dir():
        files = _data_files(p)
        if not files:
            raise DataError(f"{p}: folder holds no {', '.join(SUFFIXES)} files")
        if declared is not None:
            return SplitSource(text, split, tuple(files))
        mine = [f for f in files if split_of(f) == split]
        if not mine:
            names = ", ".join(f.name for f in files[:6]) + (" ..." if len(files) > 6 else "")
            raise DataError(
                f"{p}: no {split} file in this folder (found {names}): name the split files "
                f"train.* and test.*, or pass {p}:{split} to read the whole folder as {split}"
            )
        return SplitSource(text, split, tuple(mine))
    if _HUB_ID.match(base) and not base.endswith(SUFFIXES):
        return SplitSource(text, split, hub=base)
    raise DataError(f"{base}: no such file or folder (nor a hub id like owner/name)")


def _location(source: str, line: int | None, index: int) -> str:
    return f"{source}:{line}" if line is not None else f"{source}: row {index}"


def _iter_jsonl(path: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue  # blank lines (and the final newline) are not records
        loc = _location(str(path), lineno, lineno - 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield loc, RecordError("not_utf8", None, f"bytes at column {e.start + 1} are not UTF-8")
            continue
        try:
            yield loc, json.loads(text)
        except json.JSONDecodeError as e:
            msg = f"invalid JSON: {e.msg} at column {e.colno}"
            yield loc, RecordError("invalid_json", None, msg)


def _iter_json_array(path: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        msg = "bytes are not UTF-8; the rest of the file is unreadable"
        yield _location(str(path), line, 0), RecordError("not_utf8", None, msg)
        return
    # Decode element by element (not json.loads of the whole file) so every record keeps
    # its line number for error messages.
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    pos = ws.match(text, text.index("[") + 1).end()
    line, counted = 1, 0  # line number at `pos`, counted incrementally (files can be large)

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    index = 0
    while pos < len(text) and text[pos] != "]":
        loc = _location(str(path), line_at(pos), index)
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            msg = f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}; rest unreadable"
            yield loc, RecordError("invalid_json", None, msg)
            return
        yield loc, obj
        index += 1
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
        elif pos < len(text) and text[pos] != "]":
            break
    # a well-formed file ends with "]" and whitespace
    closed = pos < len(text) and text[pos] == "]"
    if not closed or text[pos + 1 :].strip():
        what = "extra data after ']'" if closed else "expected ',' or ']'"
        err = RecordError("invalid_json", None, f"invalid JSON: {what}")
        yield _location(str(path), line_at(pos), index), err


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet: {e}") from e
    for i, row in enumerate(table.to_pylist()):
        yield _location(str(path), None, i), row


def iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, record or RecordError) for every record of one file."""
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from e
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors write
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        yield from _iter_json_array(path, data)
    else:  # JSON Lines, whatever the suffix: a .json file of one object per line is common
        yield from _iter_jsonl(path, data)


def iter_hub(hub_id: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # network, auth (gated dataset), unknown split, ...
        raise DataError(
            f"{hub_id}: cannot load from the hub ({type(e).__name__}: {e}); KardiaBench is "
            "gated: accept its terms and log in, or pass a local train.jsonl"
        ) from e
    for i, row in enumerate(ds):
        yield _location(f"{hub_id}[{split}]", None, i), row


def iter_records(path: str | Path, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """(location, raw record or RecordError) for the records of `split` in `path`
    (see `resolve_split`), or with split None for every record `path` names (a hub
    id: its train split)."""
    if split is not None:
        source = resolve_split(path, split)
        if source.hub:
            yield from iter_hub(source.hub, split)
        for f in source.files:
            yield from iter_file(f)
        return
    files = resolve_paths(path)
    if files is not None:
        for f in files:
            yield from iter_file(f)
    elif _HUB_ID.match(str(path)) and not str(path).endswith(SUFFIXES):
        yield from iter_hub(str(path), "train")
    else:
        raise DataError(f"{path}: no such file or folder (nor a hub id like owner/name)")
