"""One home per idea: the judge's settings, the batch's shard count, the bucket lookup
and left padding, and the span-marker patterns are each defined once and agree with
what their users relied on."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from kardia_jax.data.pipeline import bucket_length, pad_left, pow2_bucket
from kardia_jax.data.spans import (
    BEGIN_RE_BY_NAME,
    MARKER_RE,
    SPAN_MARKERS,
    SPAN_NAMES,
    SPAN_RE,
    FourSpans,
    find_span,
    span_match,
)
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.eval.config import eval_config, judge_settings
from kardia_jax.rewards.judge import (
    JudgeConfig,
    judge_config_from_section,
    judge_section,
)
from kardia_jax.rl.config import grpo_config
from kardia_jax.sharding import DEFAULT_RULES, batch_shards, make_mesh


def test_grpo_and_eval_read_the_same_judge_settings():
    rl, ev = grpo_config().reward.judge, eval_config().judge
    assert rl.to_dict() == {k: ev[k] for k in judge_section()}
    assert judge_config_from_section(rl, "reward.judge") == judge_settings(ev) == JudgeConfig()
    section = judge_section()
    section.max_candidate_tokens = 64
    assert judge_settings(section).limits.max_candidate_tokens == 64
    with pytest.raises(ConfigError, match="^reward.judge: unknown judge setting"):
        judge_config_from_section({**rl.to_dict(), "temprature": 0.5}, "reward.judge")


def test_batch_shards_is_the_product_of_the_batch_axes():
    assert batch_shards(None) == 1
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    batch_axes = dict(DEFAULT_RULES)["batch"]
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    assert batch_shards(mesh) == int(np.prod([mesh.shape[a] for a in axes])) > 1
    assert batch_shards(mesh, (("batch", None),) + DEFAULT_RULES[1:]) == 1


def test_bucket_lookup_and_left_padding():
    assert [bucket_length(n, (64, 16, 32)) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    with pytest.raises(DataError, match="a row of 65 tokens exceeds the largest bucket 64"):
        bucket_length(65, (16, 64))
    with pytest.raises(ConfigError, match="a prompt of 9"):
        bucket_length(9, (8,), "a prompt of", ConfigError)
    assert [pow2_bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert [pow2_bucket(n, 6) for n in (1, 3, 9)] == [6, 6, 18]
    ids, mask = pad_left([[5, 6], [7]], 4, pad_id=0, batch=3)
    np.testing.assert_array_equal(ids, [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
    # The batch-padding row keeps one attended token, so its softmax stays finite.
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])


@pytest.mark.parametrize("notation", ["special", "tags"])
def test_span_patterns_find_what_the_formatter_writes(notation):
    spans = FourSpans("They feel alone.", "Acknowledge it.", "lonely", "That sounds hard.")
    text = spans.format(notation)
    assert len(MARKER_RE.findall(text)) == 8
    assert [span_match(m)[0] for m in SPAN_RE.finditer(text)] == list(SPAN_NAMES)
    for name in SPAN_NAMES:
        assert find_span(name, text) == getattr(spans, name)
        assert len(BEGIN_RE_BY_NAME[name].findall(text)) == 1
    if notation == "special":  # the tokenizer's eight added tokens are the markers
        assert [m.group(0) for m in MARKER_RE.finditer(text)] == list(SPAN_MARKERS)
    assert find_span("emotion", "<emotion>unclosed") is None


def test_no_module_outside_data_spans_compiles_a_span_marker_pattern():
    import pathlib

    import kardia_jax

    root = pathlib.Path(kardia_jax.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "spans.py"
        and re.search(r"re\.compile\([^)]*(_begin|understanding|emotion>)", p.read_text("utf-8"))
    ]
    assert offenders == []


def test_json_writers_replace_whole_files_and_append_lines(tmp_path):
    import json

    from kardia_jax.jsonio import append_jsonl, write_json, write_text

    path = tmp_path / "r.json"
    write_json(path, {"b": 1, "a": tmp_path, "é": "ü"}, sort_keys=True)
    text = path.read_text("utf-8")
    assert text.endswith("}\n") and "é" in text and json.loads(text)["a"] == str(tmp_path)
    assert list(json.loads(text)) == ["a", "b", "é"]
    write_text(path, "x")  # replaced in one step, no temporary left behind
    assert path.read_text("utf-8") == "x" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 1})
    append_jsonl(log, [{"step": 2}, {"step": 3}])
    append_jsonl(log, [])
    assert [json.loads(x)["step"] for x in log.read_text("utf-8").splitlines()] == [1, 2, 3]
    with pytest.raises(TypeError):  # no silent str() unless asked for
        write_json(tmp_path / "bad.json", {"x": object()}, default=None)
