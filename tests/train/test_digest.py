"""The checkpoint digest: the same sums numpy computes from the bytes, whatever the
sharding, and a change of any one bit or of the order of two values shows."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kardia_jax.train.digest import digest_mismatch, state_digest


def numpy_sums(x: np.ndarray) -> list[int]:
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
    bits = np.ascontiguousarray(x).view(unsigned).reshape(-1).astype(np.uint64)
    weight = np.arange(bits.size, dtype=np.uint64) * 2 + 1
    return [int(bits.sum() % 2**32), int((bits * weight % 2**32).sum() % 2**32)]


def tree():
    r = np.random.default_rng(0)
    return {
        "w": r.standard_normal((64, 48)).astype(np.float32),
        "h": r.standard_normal((16, 8, 4)).astype(ml_dtypes.bfloat16),
        "step": np.asarray(12345, np.int32),
        "ids": r.integers(-(2**31), 2**31 - 1, (40,), dtype=np.int64).astype(np.int32),
    }


def test_sums_are_numpys_sums_of_the_bit_patterns():
    t = tree()
    got = state_digest(jax.tree.map(jnp.asarray, t))
    assert got == {k: numpy_sums(v) for k, v in t.items()}


def test_the_same_on_any_sharding():
    t = tree()
    devices = np.asarray(jax.devices())
    assert devices.size >= 4
    mesh = Mesh(devices.reshape(2, -1), ("a", "b"))
    specs = {"w": PartitionSpec("a", "b"), "h": PartitionSpec("b"), "step": PartitionSpec()}
    specs["ids"] = PartitionSpec(("a", "b"))
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in t.items()}
    assert state_digest(sharded) == state_digest(jax.tree.map(jnp.asarray, t))


def test_one_flipped_bit_or_two_swapped_values_show():
    t = tree()
    base = state_digest(t)
    flipped = dict(t, w=t["w"].copy())
    flipped["w"].view(np.uint32)[17, 5] ^= 1 << 3
    assert digest_mismatch(base, state_digest(flipped)) == ["w"]
    swapped = dict(t, h=t["h"].copy())
    swapped["h"][0, 0, 0], swapped["h"][3, 2, 1] = t["h"][3, 2, 1], t["h"][0, 0, 0]
    got = state_digest(swapped)
    assert got["h"][0] == base["h"][0]  # the plain sum cannot see an exchange
    assert digest_mismatch(base, got) == ["h"]
    assert digest_mismatch(base, {k: v for k, v in base.items() if k != "ids"}) == ["ids"]


def test_arrays_that_decode_but_differ_from_their_checksum_are_moved_aside(tmp_path, capsys):
    import os
    import shutil

    from kardia_jax.train.checkpoints import Checkpointer

    mesh = Mesh(np.asarray(jax.devices()), ("d",))
    rows = NamedSharding(mesh, PartitionSpec("d"))

    def full(v):
        return np.random.default_rng(v).standard_normal((8, 256), np.float32)

    def state(v):
        return {"w": jax.device_put(full(v), rows), "n": jnp.int32(v)}

    ckpt = Checkpointer(str(tmp_path), async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, state(step), {"at": step}, wait=True)
    ckpt.close()
    # Step 3's arrays replaced by step 2's: every file is whole and decodes, every
    # value is a real one, only the checksum saved with step 3 can tell.
    shutil.rmtree(tmp_path / "3" / "state")
    shutil.copytree(tmp_path / "2" / "state", tmp_path / "3" / "state")

    abstract = {
        "w": jax.ShapeDtypeStruct((8, 256), np.float32, sharding=rows),
        "n": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, PartitionSpec())),
    }
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    step, restored, data = ckpt.restore_latest(abstract)
    ckpt.close()
    assert (step, data["at"]) == (2, 2)
    np.testing.assert_array_equal(np.asarray(restored["w"]), full(2))
    out = capsys.readouterr().out
    assert "checkpoint" in out and "3 is unreadable (the arrays read back differ from the" in out
    assert "checksum saved with them (2 of 2: n, w)" in out, out
    assert any(n.startswith("3.unreadable-") for n in os.listdir(tmp_path))
