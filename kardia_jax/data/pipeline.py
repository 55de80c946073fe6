"""grain pipelines from tokenised examples to static-shape numpy batches.

Order of operations, and why:
  indices -> pad to a multiple of shard_count -> take this host's shard -> shuffle(seed)
  -> repeat(num_epochs) -> look up examples -> batch + pad to a length bucket
Sharding before shuffling gives every host a fixed, disjoint set of examples, so the
hosts together see each example exactly once per epoch; padding the index range (with
empty, fully masked rows) gives every host the same number of batches, which SPMD
training needs. grain's shuffle re-permutes each epoch from the seed alone, and the
iterator state (`it.get_state()`, a small dict) restores the exact stream: the drivers
save it with each checkpoint and hand it back to `it.set_state`.

SFT batches (dicts of numpy arrays, right-padded):
  input_ids [B, T] int32, attention_mask [B, T] int32 (1 real, 0 pad),
  loss_mask [B, T] int32 (aligned with inputs: 1 where token t is a target, predicted
  from position t - 1), and with packing also segment_ids [B, T] int32 (1, 2, ... per
  packed example, 0 on padding) and positions [B, T] int32 (restarting at 0 per example).
T is the smallest bucket that holds the batch's longest row, so jit sees few shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np

from kardia_jax.data.examples import TokenizedExample
from kardia_jax.errors import DataError, KardiaError

_EMPTY = {"input_ids": np.zeros(0, np.int32), "loss_mask": np.zeros(0, np.int32), "index": -1}


def default_buckets(max_length: int, smallest: int = 128) -> tuple[int, ...]:
    """Powers of two from `smallest` below max_length, then max_length itself."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return (*out, max_length)


def _round_up(n: int, multiple: int = 128) -> int:
    # TPU matmuls tile by 128, so the largest default bucket is a multiple of it
    return max(multiple, -(-n // multiple) * multiple)


# The bucket lookup and left padding below are the one home of both: the SFT and prompt
# batches here, the sampler, the judge and GRPO's update batch all pad through them.
def bucket_length(
    n: int, buckets: Sequence[int], what: str = "a row of", error: type[KardiaError] = DataError
) -> int:
    """The smallest of `buckets` that holds `n` (tokens); `error` names `what` outgrew
    them."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise error(f"{what} {n} tokens exceeds the largest bucket {max(buckets)}")


def pow2_bucket(n: int, multiple: int = 1) -> int:
    """The power of two >= n, rounded up to a multiple of `multiple` (a batch size that
    divides over the data shards): log2 of the largest batch programs at most."""
    b = 1 << max(0, (n - 1).bit_length())
    return -(-b // multiple) * multiple


def pad_left(
    rows: Sequence[Sequence[int]], length: int, pad_id: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """[batch, length] ids and attention mask, each row ending at the last column.
    Batch-padding rows (after `rows`) get one dummy token, which keeps their attention
    (and anything computed from them) finite."""
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    mask[len(rows) :, -1] = 1
    return ids, mask


def check_buckets(lengths: Sequence[int], buckets: Sequence[int], what: str) -> None:
    """Refuses, before training, buckets that the longest of `lengths` would outgrow
    at some step (`bucket_length` would raise there, minutes in)."""
    longest = max(lengths, default=0)
    if buckets and longest > max(buckets):
        raise DataError(
            f"{what}: the longest has {longest} tokens, more than the largest of "
            f"data.buckets={tuple(buckets)}: add a bucket >= {longest} or lower data.max_length"
        )


def pad_batch(
    rows: Sequence[dict],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int = 0,
    left: bool = False,
) -> dict[str, np.ndarray]:
    """Stacks rows into [batch_size, bucket] arrays; missing rows are empty (all masked)."""
    length = bucket_length(max([len(r["input_ids"]) for r in rows] + [1]), buckets)
    ids = np.full((batch_size, length), pad_id, np.int32)
    attn = np.zeros((batch_size, length), np.int32)
    loss = np.zeros((batch_size, length), np.int32)
    index = np.full((batch_size,), -1, np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        sl = slice(length - n, length) if left else slice(0, n)
        ids[i, sl] = r["input_ids"]
        attn[i, sl] = 1
        loss[i, sl] = r["loss_mask"]
        index[i] = r["index"]
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss, "index": index}


def _host_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only for the defaults: one shard per JAX process

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index {shard_index} is not in [0, {shard_count})")
    return shard_index, shard_count


def _indices(n: int, seed: int, shard: tuple[int, int], shuffle: bool, num_epochs):
    if n == 0:
        raise DataError("no examples to build a pipeline from")
    index, count = shard
    padded = -(-n // count) * count
    ds = grain.MapDataset.range(padded)[index::count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs)


def _lookup(examples: Sequence[TokenizedExample], prompts: bool):
    def fn(i: int) -> dict:
        if i >= len(examples):
            return _EMPTY
        ex = examples[i]
        if prompts:
            ids = ex.prompt_ids
            return {"input_ids": ids, "loss_mask": np.zeros(len(ids), np.int32), "index": i}
        return {"input_ids": ex.input_ids, "loss_mask": ex.loss_mask, "index": i}

    return fn


def build_sft_dataset(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
    pack: bool = False,
    pad_id: int = 0,
    drop_remainder: bool = False,
) -> grain.IterDataset:
    """The SFT batch stream for this host (see the module docstring for the layout).

    `batch_size` is per host. num_epochs=None repeats forever (train by step count).
    With `pack`, several examples share a row of length max(buckets) (first-fit, one
    packing bin per row); packed streams differ in length per host, so train them by
    step count rather than to the end of an epoch.
    """
    shard = _host_shard(shard_index, shard_count)
    max_len = max(len(e) for e in examples) if examples else 0
    buckets = tuple(buckets) if buckets else default_buckets(_round_up(max_len))
    ds = _indices(len(examples), seed, shard, shuffle, num_epochs).map(_lookup(examples, False))
    if not pack:
        batch_fn = functools.partial(
            pad_batch, batch_size=batch_size, buckets=buckets, pad_id=pad_id
        )
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
        return ds.map(_drop_index).to_iter_dataset()
    length = max(buckets)
    if max_len > length:
        raise DataError(f"an example of {max_len} tokens does not fit packed rows of {length}")
    it = ds.filter(lambda r: r["index"] >= 0).map(_drop_index).to_iter_dataset()
    it = grain.experimental.FirstFitPackIterDataset(
        it,
        length_struct={"input_ids": length, "loss_mask": length},
        num_packing_bins=batch_size,
        shuffle_bins=shuffle,
        seed=seed,
    )
    return it.batch(
        batch_size,
        drop_remainder=drop_remainder,
        batch_fn=functools.partial(
            _stack_packed, batch_size=batch_size, length=length, pad_id=pad_id
        ),
    )


def _drop_index(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "index"}


def _stack_packed(rows, *, batch_size: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    seg = np.zeros((batch_size, length), np.int32)
    out = {
        "input_ids": np.full((batch_size, length), pad_id, np.int32),
        "loss_mask": np.zeros((batch_size, length), np.int32),
        "positions": np.zeros((batch_size, length), np.int32),
    }
    for i, r in enumerate(rows):
        seg[i] = r["input_ids_segment_ids"]
        real = seg[i] > 0
        out["input_ids"][i] = np.where(real, r["input_ids"], pad_id)
        out["loss_mask"][i] = r["loss_mask"]
        out["positions"][i] = r["input_ids_positions"]
    out["segment_ids"] = seg
    out["attention_mask"] = (seg > 0).astype(np.int32)
    return out


def build_prompt_dataset(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
    pad_id: int = 0,
) -> grain.IterDataset:
    """Generation prompts (each example's prompt_ids) for GRPO rollouts, left-padded so
    every row ends at the same position. Batches: input_ids, attention_mask [B, T] and
    index [B] (the example's position in `examples`, -1 for padding rows) to look up the
    gold emotion and persona when scoring."""
    shard = _host_shard(shard_index, shard_count)
    max_len = max(e.prompt_length for e in examples) if examples else 1
    buckets = tuple(buckets) if buckets else default_buckets(_round_up(max_len))
    ds = _indices(len(examples), seed, shard, shuffle, num_epochs).map(_lookup(examples, True))
    batch_fn = functools.partial(
        pad_batch, batch_size=batch_size, buckets=buckets, pad_id=pad_id, left=True
    )
    ds = ds.batch(batch_size, batch_fn=batch_fn)
    return ds.map(lambda b: {k: v for k, v in b.items() if k != "loss_mask"}).to_iter_dataset()


def steps_per_epoch(num_examples: int, global_batch_size: int, shard_count: int = 1) -> int:
    """Unpacked batches per host per epoch (equal on every host)."""
    per_host_batch = global_batch_size // shard_count
    per_host_examples = -(-num_examples // shard_count)
    return -(-per_host_examples // per_host_batch)


def sft_steps_per_epoch(
    examples: Sequence[TokenizedExample],
    *,
    global_batch: int,
    shard_count: int = 1,
    pack: bool = False,
    seed: int = 0,
    buckets: Sequence[int] | None = None,
) -> int:
    """Steps of one epoch of the SFT driver's stream (`build_sft_dataset` with the
    global batch on one shard). Packed, a row holds as many examples as fit, so the
    count depends on the lengths and the shuffle: it is counted by running the packer
    over one epoch (later epochs reshuffle and may pack a row more or less)."""
    if not pack:
        return steps_per_epoch(len(examples), global_batch, shard_count)
    ds = build_sft_dataset(
        examples,
        batch_size=global_batch,
        seed=seed,
        shard_index=0,
        shard_count=1,
        num_epochs=1,
        buckets=buckets,
        pack=True,
    )
    return sum(1 for _ in ds)
