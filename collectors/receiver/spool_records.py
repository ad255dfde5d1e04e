"""The receiver spool's records on disk (:mod:`observer.collectors.receiver.spool`): one acknowledged Kafka
message framed as ``length (u32) | crc32 (u32) | payload``, the payload lz4-compressed.

A crash mid-write leaves a torn or corrupt record at a segment's tail: :func:`decode_all`
stops at the first record whose length or CRC does not check, and says how many bytes it
left (that record was never acknowledged: its fsync had not returned).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import lz4.block

_HEAD = struct.Struct(">II")  # payload length, crc32 of the payload


@dataclass(frozen=True)
class Entry:
    """One acknowledged Kafka message, as the spool keeps it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def encode(e: Entry) -> bytes:
    """One framed record.

    >>> record = encode(Entry("t", 1, 2, None, b"v", (("h", b"x"),)))
    >>> decode_all(record + record[:5])  # a torn copy after a whole one
    ([Entry(topic='t', partition=1, offset=2, key=None, value=b'v', headers=(('h', b'x'),))], 5)
    """
    topic = e.topic.encode()
    parts = [struct.pack(">H", len(topic)), topic, struct.pack(">iq", e.partition, e.offset)]
    parts += [struct.pack(">i", -1)] if e.key is None else [struct.pack(">i", len(e.key)), e.key]
    parts += [struct.pack(">I", len(e.value)), e.value, struct.pack(">H", len(e.headers))]
    for name, value in e.headers:
        raw = name.encode()
        parts += [struct.pack(">H", len(raw)), raw, struct.pack(">I", len(value)), value]
    payload = lz4.block.compress(b"".join(parts))
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_payload(p: memoryview) -> Entry:
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        if at + n > len(p):
            raise ValueError("record shorter than its fields")
        chunk = bytes(p[at:at + n])
        at += n
        return chunk

    topic = take(struct.unpack(">H", take(2))[0]).decode()
    partition, offset = struct.unpack(">iq", take(12))
    key_len = struct.unpack(">i", take(4))[0]
    key = None if key_len < 0 else take(key_len)
    value = take(struct.unpack(">I", take(4))[0])
    headers = []
    for _ in range(struct.unpack(">H", take(2))[0]):
        name = take(struct.unpack(">H", take(2))[0]).decode()
        headers.append((name, take(struct.unpack(">I", take(4))[0])))
    if at != len(p):
        raise ValueError("record longer than its fields")
    return Entry(topic, partition, offset, key, value, tuple(headers))


def decode_all(data: bytes) -> tuple[list[Entry], int]:
    """The whole records at the start of ``data``, and how many bytes after them do not
    form one (a torn or corrupt tail: length or CRC wrong)."""
    view = memoryview(data)
    entries: list[Entry] = []
    at = 0
    while at + _HEAD.size <= len(view):
        length, crc = _HEAD.unpack_from(view, at)
        payload = view[at + _HEAD.size:at + _HEAD.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            entries.append(_decode_payload(memoryview(lz4.block.decompress(payload))))
        except (ValueError, struct.error, UnicodeDecodeError, lz4.block.LZ4BlockError):
            break  # a CRC collision on garbage: as torn
        at += _HEAD.size + length
    return entries, len(view) - at
