"""Safetensors reading and writing without pickles and without whole-file loads.

Reading memory-maps the file and copies out only the requested slice, so a host
materialises just the shards its devices hold. Writing streams tensors one at a
time behind a header computed up front, so a large model never sits in host
memory at once. bfloat16 goes through `ml_dtypes`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from kardia_jax.errors import CheckpointError

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own bound on the JSON header


class SafetensorsFile:
    """Lazy view of one .safetensors file: header parsed, data memory-mapped."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{path}: truncated safetensors file (no header)")
                (n,) = struct.unpack("<Q", raw)
                if n > min(_MAX_HEADER, size - 8):
                    raise CheckpointError(f"{path}: corrupt safetensors header length {n}")
                header = json.loads(f.read(n))
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        data_len = size - self._data_start
        for name, e in header.items():
            code = e.get("dtype")
            if code not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
            dtype, shape = _DTYPES[code], tuple(int(s) for s in e["shape"])
            begin, end = e["data_offsets"]
            if end - begin != math.prod(shape) * dtype.itemsize or end > data_len:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has inconsistent offsets or the file is truncated "
                    f"(needs bytes {begin}..{end} of {data_len})"
                )
            self._entries[name] = (dtype, shape, begin)
        self._mmap = None

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """A copy of `tensor[index]`; only the pages covering the slice are touched."""
        dtype, shape, begin = self._entries[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        flat = self._mmap[
            self._data_start + begin : self._data_start + begin + math.prod(shape) * dtype.itemsize
        ]
        arr = flat.view(dtype).reshape(shape)
        return np.array(arr if index is None else arr[index])


def write_safetensors(
    path: str,
    tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, object]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes `(name, shape, dtype, produce)` entries; `produce()` returns the array.

    Shapes and dtypes are known before any data exists, so the header goes first
    and each tensor is produced, written and dropped in turn.
    """
    entries = list(tensors)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in entries:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": _CODES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in entries:
            arr = np.ascontiguousarray(produce(), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
            f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
