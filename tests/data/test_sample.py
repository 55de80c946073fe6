"""The bundled sample meets its spec (profiles, dialogue lengths, all 32 emotions, four
spans everywhere, profile-disjoint train / test) and is reproducible from its script."""

from __future__ import annotations

import collections

from kardia_jax.data.emotions import EMOTIONS
from kardia_jax.data.reader import sample_path
from kardia_jax.data.sample.make_sample import write
from kardia_jax.data.spans import parse_spans
from kardia_jax.data.validate import load_dialogues


def test_sample_meets_the_spec(sample_dialogues):
    train, _ = load_dialogues("sample:train")
    test, _ = load_dialogues("sample:test")
    assert len(train) + len(test) == len(sample_dialogues) >= 40
    assert len({d.profile_key for d in sample_dialogues}) >= 12
    assert not {d.profile_key for d in train} & {d.profile_key for d in test}
    assert not {d.person for d in train} & {d.person for d in test}
    assert set(EMOTIONS) <= {d.emotion for d in train}
    for d in sample_dialogues:
        assert 6 <= len(d.assistant_turns) <= 10
        assert d.person.startswith(f"MBTI: {d.mbti}\nAbout: ")
        assert "\nSignature: " in d.person and "\nRecent Activities:\n- " in d.person
        for m in d.messages:
            if m.role == "assistant":
                assert parse_spans(m.content).emotion == d.emotion
    # the raw files use both notations: tags in train, special tokens in test
    assert "<understanding>" in sample_path("train").read_text()
    assert "<|understanding_begin|>" in sample_path("test").read_text()


def test_sample_text_varies():
    train, _ = load_dialogues("sample:train")
    users = collections.Counter(m.content for d in train for m in d.messages if m.role == "user")
    assert len(users) > 0.7 * sum(users.values())  # mostly distinct user turns
    responses = {m.spans.response for d in train for m in d.messages if m.role == "assistant"}
    assert len(responses) > 100


def test_sample_regenerates_byte_for_byte(tmp_path):
    counts = write(tmp_path)
    assert counts == {"train": 34, "test": 8}
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == sample_path(split).read_bytes()
