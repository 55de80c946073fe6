"""Named splits: every data source resolves to train or test by file name, an
explicit suffix, the hub's splits or the bundled sample, never by guessing; the
profile-overlap check between them; what a stage records in data.json."""

from __future__ import annotations

import json

import pytest

from kardia_jax.data.reader import resolve_split, split_of
from kardia_jax.data.splits import check_profile_overlap
from kardia_jax.data.validate import data_record, load_dialogues, write_data_record
from kardia_jax.errors import DataError
from tests.data.helpers import BASE_RECORD


def _write(path, users):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**BASE_RECORD, "anon_username": u} for u in users]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.jsonl", "train"),
        ("test.parquet", "test"),
        ("TRAIN.json", "train"),
        ("train-00000-of-00002.parquet", "train"),
        ("test_part1.jsonl", "test"),
        ("trainset.jsonl", None),
        ("validation.jsonl", None),
        ("easy.jsonl", None),
    ],
)
def test_split_of_file_names(tmp_path, name, split):
    assert split_of(tmp_path / name) == split


def test_folder_gives_each_split_its_own_files(tmp_path):
    _write(tmp_path / "train.jsonl", ["a", "b"])
    _write(tmp_path / "test.jsonl", ["c"])
    (tmp_path / "notes.txt").write_text("not data")
    train, rt = load_dialogues(tmp_path, split="train")
    test, re_ = load_dialogues(tmp_path, split="test")
    assert [d.anon_username for d in train] == ["a", "b"]
    assert [d.anon_username for d in test] == ["c"]
    assert rt.files == [str(tmp_path / "train.jsonl")] and rt.split == "train"
    assert re_.files == [str(tmp_path / "test.jsonl")]


def test_hub_snapshot_layout_with_shards_under_data(tmp_path):
    _write(tmp_path / "data" / "train-00000-of-00002.jsonl", ["a"])
    _write(tmp_path / "data" / "train-00001-of-00002.jsonl", ["b"])
    _write(tmp_path / "data" / "test-00000-of-00001.jsonl", ["c"])
    train, _ = load_dialogues(tmp_path, split="train")
    assert sorted(d.anon_username for d in train) == ["a", "b"]


def test_folder_without_the_split_is_refused(tmp_path):
    _write(tmp_path / "train.jsonl", ["a"])
    with pytest.raises(DataError, match="no test file in this folder.*train.jsonl"):
        load_dialogues(tmp_path, split="test")


def test_folder_of_unnamed_files_is_refused_unless_suffixed(tmp_path):
    _write(tmp_path / "part1.jsonl", ["a"])
    _write(tmp_path / "part2.jsonl", ["b"])
    with pytest.raises(DataError, match="name the split files train.* and test.*"):
        load_dialogues(tmp_path, split="train")
    train, _ = load_dialogues(f"{tmp_path}:train", split="train")
    assert len(train) == 2


def test_ambiguous_single_file_is_refused_with_one_line(tmp_path):
    f = _write(tmp_path / "kardia.jsonl", ["a"])
    with pytest.raises(DataError) as e:
        load_dialogues(f, split="train")
    assert "cannot tell which split" in str(e.value) and "\n" not in str(e.value)
    assert f"{f}:train" in str(e.value)
    (d,), report = load_dialogues(f"{f}:train", split="train")
    assert report.files == [str(f)]


def test_a_split_file_is_never_read_as_the_other(tmp_path):
    f = _write(tmp_path / "test.jsonl", ["a"])
    with pytest.raises(DataError, match="is the test split by its name; this stage reads train"):
        load_dialogues(f, split="train")
    with pytest.raises(DataError, match="names the test split, and this stage reads train"):
        load_dialogues(f"{tmp_path / 'x.jsonl'}:test", split="train")
    with pytest.raises(DataError, match="names the test split"):
        load_dialogues("sample:test", split="train")


def test_sample_and_hub_ids():
    assert resolve_split("", "test").files[0].name == "test.jsonl"
    assert resolve_split("sample", "train").files[0].name == "train.jsonl"
    src = resolve_split("Jhcircle/KardiaBench", "test")
    assert src.hub == "Jhcircle/KardiaBench" and src.describe() == ["Jhcircle/KardiaBench[test]"]
    assert resolve_split("Jhcircle/KardiaBench:train", "train").hub == "Jhcircle/KardiaBench"


def test_without_a_split_every_file_is_read(tmp_path):
    # `data validate` and other tools read what the path names, whatever its name.
    _write(tmp_path / "train.jsonl", ["a"])
    _write(tmp_path / "test.jsonl", ["b"])
    both, report = load_dialogues(tmp_path)
    assert len(both) == 2 and report.split is None


def test_profile_overlap_counted_and_strict_refuses(tmp_path):
    _write(tmp_path / "train.jsonl", ["a", "b", "shared"])
    _write(tmp_path / "test.jsonl", ["shared", "shared", "c"])
    train, _ = load_dialogues(tmp_path, split="train")
    test, _ = load_dialogues(tmp_path, split="test")
    counts = check_profile_overlap(train, test, "skip", str(tmp_path))
    assert counts == {"shared_profiles": 1, "test_dialogues_with_shared_profile": 2}
    with pytest.raises(DataError, match="1 profile.*both train and test.*'shared'"):
        check_profile_overlap(train, test, "strict", str(tmp_path))
    disjoint = [d for d in test if d.anon_username == "c"]
    assert check_profile_overlap(train, disjoint, "strict", "x")["shared_profiles"] == 0


def test_data_record(tmp_path):
    from kardia_jax.data.examples import turn_examples

    _write(tmp_path / "train.jsonl", ["a", "a", "b"])
    dialogues, report = load_dialogues(tmp_path, split="train")
    held = turn_examples(dialogues[2:])
    record = data_record(report, {"train": turn_examples(dialogues[:2]), "held_out": held})
    assert record["split"] == "train" and record["files"] == [str(tmp_path / "train.jsonl")]
    assert record["train"] == {"examples": 4, "dialogues": 2, "profiles": 1}
    assert record["held_out"] == {"examples": 2, "dialogues": 1, "profiles": 1}
    write_data_record(tmp_path / "stage", record)
    assert json.loads((tmp_path / "stage" / "data.json").read_text()) == record
