"""The appended logs after a kill mid-write: a torn last line is left out by readers
and cut on resume (with a warning), rows past the resumed step are dropped, and a bad
line before the last is corruption that raises and leaves the file alone."""

import json
import os
import re

import pytest

from kardia_jax.errors import DataError
from kardia_jax.eval.report import read_log
from kardia_jax.jsonio import append_jsonl, read_jsonl, resume_jsonl
from kardia_jax.rl.select import read_history

ROWS = [{"step": 1, "loss": 3.0, "lr": 1e-05}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 2.0}]

# What a writer killed mid-row can leave after the last whole line.
TORN = {
    "prefix of a row": b'{"step": 4, "lo',
    "whole row, newline lost": b'{"step": 4, "loss": 1.5}',
    "cut inside a UTF-8 character": b'{"step": 4, "note": "\xe2\x82',
    "zeros after a power loss": b"\x00" * 16,
    "terminated but unparsable": b'{"step": 4, "loss": 1.\n',
}


def write_log(path, rows=ROWS, tail: bytes = b"") -> bytes:
    append_jsonl(path, rows)
    with open(path, "ab") as f:
        f.write(tail)
    return path.read_bytes()


@pytest.mark.parametrize("tail", TORN.values(), ids=TORN.keys())
def test_torn_last_line_is_left_out_by_readers_and_cut_on_resume(tmp_path, capsys, tail):
    path = tmp_path / "train_log.jsonl"
    before = write_log(path, tail=tail)
    assert read_jsonl(path) == ROWS
    assert path.read_bytes() == before  # a reader never edits
    assert capsys.readouterr().out == ""

    assert resume_jsonl(path, 10) == ROWS
    assert path.read_bytes() == before[: len(before) - len(tail)]
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {path}: cut a torn last line ({len(tail)} bytes) left by a kill"]
    # The next row appended lands on a line of its own.
    append_jsonl(path, {"step": 4, "loss": 1.0})
    assert read_jsonl(path) == ROWS + [{"step": 4, "loss": 1.0}]
    assert not os.path.exists(f"{path}.tmp")


def test_every_reader_of_a_run_skips_a_torn_last_line(tmp_path):
    train = tmp_path / "train_log.jsonl"
    write_log(train, tail=TORN["prefix of a row"])
    assert read_log(str(train))["loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    selection = tmp_path / "selection.jsonl"
    rows = [{"step": 0, "score": 0.1}, {"step": 1, "score": 0.5}, {"step": 2, "score": 0.3}]
    before = write_log(selection, rows, tail=b'{"step": 3, "score": 0.9')
    best = read_history(str(selection), 5)
    assert (best.baseline, best.step, best.score) == (0.1, 1, 0.5)
    assert selection.read_bytes() == before


@pytest.mark.parametrize("garbage", [b"#oops\n", b'{"step": 2, "lo\n', b"[1, 2]\n", b"\xff\xfe\n"])
def test_a_bad_line_before_the_last_is_corruption(tmp_path, capsys, garbage):
    path = tmp_path / "grpo_log.jsonl"
    append_jsonl(path, ROWS[:1])
    with open(path, "ab") as f:
        f.write(garbage)
    before = write_log(path, ROWS[1:], tail=b'{"step": 4')
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(path))}:2: not a JSON object \(.*\); the file is corrupt$",
    ):
        resume_jsonl(path, 2)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: "):
        read_jsonl(path)
    assert path.read_bytes() == before
    assert capsys.readouterr().out == ""


def test_empty_and_missing_files(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert read_jsonl(missing) == [] and resume_jsonl(missing, 3) == []
    assert not missing.exists()  # resuming creates nothing
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert read_jsonl(empty) == [] and resume_jsonl(empty, 3) == []
    assert empty.read_bytes() == b""


def test_resume_keeps_rows_up_to_the_step_as_written(tmp_path, capsys):
    path = tmp_path / "rollouts.jsonl"
    # Two rows per step (the ledger's shape); the kept lines keep their exact text.
    rows = [{"step": s, "i": i, "x": 0.1 * s} for s in (1, 2, 3) for i in range(2)]
    before = write_log(path, rows)
    inode = os.stat(path).st_ino
    assert resume_jsonl(path, 3) == rows  # nothing to change: the file is not touched
    assert os.stat(path).st_ino == inode and path.read_bytes() == before

    assert resume_jsonl(path, 2) == rows[:4]
    assert path.read_bytes() == b"".join(before.splitlines(keepends=True)[:4])
    assert os.stat(path).st_ino != inode  # replaced through a temporary name, not edited
    assert not os.path.exists(f"{path}.tmp")
    assert resume_jsonl(path, -1) == [] and path.read_bytes() == b""  # a fresh run
    assert capsys.readouterr().out == ""  # nothing torn, nothing to warn about

    # Without a step, resuming only cuts a torn last line (the eval files, keyed by id).
    write_log(path, [{"id": "a"}], tail=b'{"id": "b"')
    assert resume_jsonl(path) == [{"id": "a"}]
    assert json.loads(path.read_text()) == {"id": "a"}


@pytest.mark.parametrize("bad,shown", [({"loss": 2.0}, "None"), ({"step": True}, "True")])
def test_a_row_without_an_integer_step_is_an_error_naming_it(tmp_path, bad, shown):
    path = tmp_path / "eval_log.jsonl"
    before = write_log(path, [{"step": 1}, bad, {"step": 2}])
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:2: no integer 'step' field \({shown}\)$"
    ):
        resume_jsonl(path, 1)
    assert path.read_bytes() == before
