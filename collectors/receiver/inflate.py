"""Request bodies read under a size cap, decompressing as they arrive.

A gzip bomb is a few kilobytes on the wire and gigabytes inflated. :class:`BoundedBody` asks
zlib for at most the bytes still allowed, so it refuses such a body after inflating
``limit + 1`` bytes, never the whole of it. The cap applies to the bytes on the wire too:
an endless run of empty deflate blocks inflates to nothing.

>>> import gzip
>>> body = BoundedBody("gzip", limit=2048)
>>> body.feed(gzip.compress(b"x" * 2000))
>>> len(body.finish())
2000
>>> bomb = BoundedBody("gzip", limit=2048)
>>> bomb.feed(gzip.compress(bytes(10_000_000)))  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
BodyTooLarge: body exceeds 2048 bytes after decompression
"""

from __future__ import annotations

import zlib

# Content-Encoding -> zlib wbits; None means the body is taken as sent.
ENCODINGS: dict[str, int | None] = {
    "identity": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2), which the OTel SDKs send.
    "deflate": zlib.MAX_WBITS,
}


class BodyTooLarge(Exception):
    """The body, as sent or as inflated, is over the limit."""


class BadEncoding(ValueError):
    """The Content-Encoding is unsupported, or the body is not valid in it."""


class BoundedBody:
    """Accumulate a request body chunk by chunk; raise once it passes ``limit`` bytes.

    ``encoding`` is the Content-Encoding header value ("" for none); see :data:`ENCODINGS`.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        name = encoding.strip().lower() or "identity"
        if name not in ENCODINGS:
            raise BadEncoding(f"unsupported Content-Encoding {encoding!r}")
        self.limit = limit
        self._wbits = ENCODINGS[name]
        self._inflater = self._new_inflater()
        self._fed = False  # the current inflater has seen input, so it must reach its end
        self._wire = 0
        self._size = 0
        self._parts: list[bytes] = []

    def _new_inflater(self) -> zlib._Decompress | None:
        return None if self._wbits is None else zlib.decompressobj(self._wbits)

    def feed(self, chunk: bytes) -> None:
        """Add the next chunk as received."""
        self._wire += len(chunk)
        if self._wire > self.limit:
            raise BodyTooLarge(f"body exceeds {self.limit} bytes as sent")
        if self._inflater is None:
            self._append(chunk)
            return
        data = chunk
        while data:
            self._fed = True
            try:
                out = self._inflater.decompress(data, self.limit - self._size + 1)
            except zlib.error as e:
                raise BadEncoding(f"body is not valid {self._name}: {e}") from None
            self._append(out)
            if self._inflater.eof:
                # gzip allows several members back to back; a new inflater reads the next.
                data = self._inflater.unused_data
                self._inflater = self._new_inflater()
                self._fed = False
            else:
                data = self._inflater.unconsumed_tail

    @property
    def size(self) -> int:
        """Bytes of body so far, inflated."""
        return self._size

    def finish(self) -> bytes:
        """The whole body; raises :class:`BadEncoding` when compressed data stops early."""
        if self._fed:
            raise BadEncoding(f"body is truncated {self._name} data")
        return b"".join(self._parts)

    @property
    def _name(self) -> str:
        return "gzip" if self._wbits == 16 + zlib.MAX_WBITS else "deflate"

    def _append(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise BodyTooLarge(f"body exceeds {self.limit} bytes after decompression")
        if data:
            self._parts.append(data)
