"""grain pipelines: static bucketed shapes, exactly-once epochs across hosts, identical
streams after restoring saved iterator state, deterministic shuffles, exact packing."""

from __future__ import annotations

import collections
import itertools
import json

import numpy as np
import pytest

from kardia_jax.data.examples import TokenizedExample
from kardia_jax.data.pipeline import (
    build_prompt_dataset,
    build_sft_dataset,
    default_buckets,
    sft_steps_per_epoch,
    steps_per_epoch,
)
from kardia_jax.errors import DataError

N = 37  # not a multiple of the host count or batch size, on purpose
BUCKETS = (64, 128, 256)


def _examples(n: int = N, seed: int = 0) -> list[TokenizedExample]:
    """Example i starts with token 1000 + i, so every row says which example it is."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(8, 250))
        ids = rng.integers(1, 999, length).astype(np.int32)
        ids[0] = 1000 + i
        prompt = int(rng.integers(2, length - 2))
        mask = np.zeros(length, np.uint8)
        mask[prompt:-1] = 1
        out.append(TokenizedExample(ids, mask, prompt, 0, f"x:{i}", 2, "sad"))
    return out


def _ids_in(batch) -> list[int]:
    """Example ids of the real rows of an unpacked batch."""
    return [
        int(r[0]) - 1000
        for r, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        if m[0]
    ]


def test_batches_have_static_bucketed_shapes_and_exact_rows():
    exs = _examples()
    ds = build_sft_dataset(exs, batch_size=4, seed=0, shard_index=0, shard_count=1,
                           num_epochs=1, buckets=BUCKETS)  # fmt: skip
    batches = list(ds)
    assert len(batches) == steps_per_epoch(N, 4) == 10
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "loss_mask"}
        shape = b["input_ids"].shape
        assert shape[0] == 4 and shape[1] in BUCKETS
        assert all(v.shape == shape and v.dtype == np.int32 for v in b.values())
        longest = b["attention_mask"].sum(1).max()
        assert shape[1] == min(x for x in BUCKETS if x >= longest)
        for row, attn, loss in zip(
            b["input_ids"], b["attention_mask"], b["loss_mask"], strict=True
        ):
            if not attn.any():  # padding row of the last batch
                assert not loss.any()
                continue
            ex = exs[int(row[0]) - 1000]
            n = len(ex)
            assert attn[:n].all() and not attn[n:].any()  # right padding
            np.testing.assert_array_equal(row[:n], ex.input_ids)
            np.testing.assert_array_equal(loss[:n], ex.loss_mask)
            assert not loss[n:].any()


@pytest.mark.parametrize("batch_size", [4, 5])
def test_two_hosts_see_every_example_exactly_once_per_epoch(batch_size):
    exs = _examples()
    streams = [
        list(build_sft_dataset(exs, batch_size=batch_size, seed=7, shard_index=h, shard_count=2,
                               num_epochs=2, buckets=BUCKETS))
        for h in range(2)
    ]  # fmt: skip
    assert len(streams[0]) == len(streams[1])  # SPMD: same number of steps on each host
    per_host = [[i for b in s for i in _ids_in(b)] for s in streams]
    assert not set(per_host[0]) & set(per_host[1])  # hosts hold disjoint shards
    half = (N + 1) // 2  # host 0's shard per epoch; host 1 has N - half and one empty row
    first = per_host[0][:half] + per_host[1][: N - half]
    second = per_host[0][half:] + per_host[1][N - half :]
    assert sorted(first) == sorted(second) == list(range(N))
    assert per_host[0][:half] != per_host[0][half:]  # reshuffled between epochs


def test_restored_iterator_continues_with_identical_batches():
    exs = _examples()
    make = lambda: build_sft_dataset(exs, batch_size=4, seed=3, shard_index=1, shard_count=2,
                                     buckets=BUCKETS)  # fmt: skip
    it = iter(make())
    for _ in range(7):  # crosses an epoch boundary later, the stream is infinite
        next(it)
    # As the drivers do: the state goes through the checkpoint's JSON and back.
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(12)]
    resumed = iter(make())
    resumed.set_state(state)
    got = [next(resumed) for _ in range(12)]
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_restored_packed_iterator_continues_identically():
    exs = _examples()
    make = lambda: build_sft_dataset(exs, batch_size=2, seed=5, shard_index=0, shard_count=1,
                                     buckets=BUCKETS, pack=True)  # fmt: skip
    it = iter(make())
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(8)]
    resumed = iter(make())
    resumed.set_state(state)
    got = [next(resumed) for _ in range(8)]
    for a, b in zip(expected, got, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_shuffle_is_deterministic_by_seed():
    exs = _examples()
    order = lambda seed: [
        i for b in build_sft_dataset(exs, batch_size=4, seed=seed, shard_index=0, shard_count=1,
                                     num_epochs=1, buckets=BUCKETS)
        for i in _ids_in(b)
    ]  # fmt: skip
    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(N))


@pytest.mark.parametrize("hosts", [1, 2])
def test_packing_keeps_every_example_whole_with_segments_and_positions(hosts):
    exs = _examples()
    streams = [
        build_sft_dataset(exs, batch_size=3, seed=0, shard_index=h, shard_count=hosts,
                          num_epochs=1, buckets=BUCKETS, pack=True)
        for h in range(hosts)
    ]  # fmt: skip
    seen = collections.Counter()
    for b in itertools.chain(*streams):
        assert set(b) == {"input_ids", "attention_mask", "loss_mask", "segment_ids", "positions"}
        assert b["input_ids"].shape == (3, 256)
        np.testing.assert_array_equal(b["attention_mask"], b["segment_ids"] > 0)
        for row in range(3):
            seg = b["segment_ids"][row]
            for s in range(1, seg.max() + 1):
                (where,) = np.nonzero(seg == s)
                assert (np.diff(where) == 1).all()  # contiguous
                ex = exs[int(b["input_ids"][row, where[0]]) - 1000]
                np.testing.assert_array_equal(b["input_ids"][row, where], ex.input_ids)
                np.testing.assert_array_equal(b["loss_mask"][row, where], ex.loss_mask)
                np.testing.assert_array_equal(b["positions"][row, where], np.arange(len(ex)))
                seen[int(ex.input_ids[0]) - 1000] += 1
            assert not b["loss_mask"][row][seg == 0].any()
    assert seen == collections.Counter(range(N))


def test_prompt_batches_are_left_padded_with_indices():
    exs = _examples()
    ds = build_prompt_dataset(exs, batch_size=4, seed=0, shard_index=0, shard_count=1,
                              num_epochs=1, buckets=BUCKETS)  # fmt: skip
    seen = []
    for b in itertools.islice(ds, 3):
        assert set(b) == {"input_ids", "attention_mask", "index"}
        for row, attn, idx in zip(b["input_ids"], b["attention_mask"], b["index"], strict=True):
            ex = exs[idx]
            n = ex.prompt_length
            assert attn[-n:].all() and not attn[:-n].any()
            np.testing.assert_array_equal(row[-n:], ex.prompt_ids)
            seen.append(int(idx))
    assert len(set(seen)) == 12


def test_bad_pipeline_arguments_are_data_errors():
    with pytest.raises(DataError, match="shard_index 2"):
        build_sft_dataset(_examples(), batch_size=2, shard_index=2, shard_count=2)
    with pytest.raises(DataError, match="no examples"):
        build_sft_dataset([], batch_size=2, shard_index=0, shard_count=1)
    with pytest.raises(DataError, match="does not fit packed rows"):
        build_sft_dataset(_examples(), batch_size=2, shard_index=0, shard_count=1,
                          buckets=(64,), pack=True)  # fmt: skip
    assert default_buckets(1024) == (128, 256, 512, 1024)
    assert default_buckets(1000) == (128, 256, 512, 1000)


def test_packed_sft_epoch_counts_packed_batches_not_unpacked_ones():
    # Several examples share a packed row, so an epoch is fewer steps than unpacked:
    # the driver's step count for `train.epochs` must follow the packed stream.
    exs = _examples()
    kw = dict(seed=3, buckets=BUCKETS)
    one_epoch = list(build_sft_dataset(exs, batch_size=4, shard_index=0, shard_count=1,
                                       num_epochs=1, pack=True, **kw))  # fmt: skip
    counted = sft_steps_per_epoch(exs, global_batch=4, pack=True, **kw)
    assert counted == len(one_epoch) < steps_per_epoch(N, 4)
    assert sft_steps_per_epoch(exs, global_batch=4, pack=False, **kw) == steps_per_epoch(N, 4)
