"""Scalars from TensorBoard event files, for the report's training curves.

tensorboard is not a dependency and tensorboardX (which writes our logs) has no
reader (lanpa/tensorboardX#318; its SummaryReader PR #577 never merged), so the
TFRecord frames are read here: u64 length, masked CRC32C of the length, the
serialized `Event`, masked CRC32C of the data (tensorboardX's `RecordWriter`), and
decoded with tensorboardX's own `event_pb2`. A frame whose CRC fails (a file cut
off by a kill) ends that file's reading.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    x = crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_records(path: str):
    """The payload of each intact record of one event file."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _HEADER.size <= len(data):
        header = data[pos : pos + 8]
        length, crc = _HEADER.unpack_from(data, pos)
        if _masked_crc(header) != crc:
            return
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if end + _FOOTER.size > len(data):
            return
        payload = data[start:end]
        if _masked_crc(payload) != _FOOTER.unpack_from(data, end)[0]:
            return
        yield payload
        pos = end + _FOOTER.size


def event_files(logdir: str) -> list[str]:
    """Event files under `logdir` (recursively), oldest first by their timestamp."""
    found = []
    for root, _, files in os.walk(logdir):
        found += [os.path.join(root, f) for f in files if "tfevents" in f]
    return sorted(found, key=lambda p: (os.path.basename(p), p))


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step. A step logged twice (a run resumed from
    an earlier checkpoint logs it again) keeps the later write."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto import event_pb2

    by_tag: dict[str, dict[int, tuple[float, float]]] = {}
    for path in event_files(logdir):
        for payload in iter_records(path):
            event = event_pb2.Event()
            try:
                event.ParseFromString(payload)
            except DecodeError:  # a frame that passed its CRC yet is no Event: skip it
                continue
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    value = float(v.simple_value)
                elif kind == "tensor" and len(v.tensor.float_val) == 1:
                    value = float(v.tensor.float_val[0])
                else:
                    continue
                seen = by_tag.setdefault(v.tag, {})
                old = seen.get(event.step)
                if old is None or event.wall_time >= old[0]:
                    seen[event.step] = (event.wall_time, value)
    return {tag: sorted((s, wv[1]) for s, wv in steps.items()) for tag, steps in by_tag.items()}


def resolve_logdir(path: str | None) -> str | None:
    """A run's workdir or its tb/ folder -> the folder holding event files."""
    if not path:
        return None
    tb = os.path.join(path, "tb")
    return tb if os.path.isdir(tb) else path
