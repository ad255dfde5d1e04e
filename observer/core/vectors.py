"""Embedding vectors on the wire: base64 of little-endian float32, compact and exact.

A 256-dimension vector is 1,368 characters this way and about 2,400 as a JSON list of floats
(rounded to 6 decimals), and it costs a few microseconds to write instead of tens: the
normaliser writes one or two per LLM call. Records still hold (and accept) lists of floats;
only their JSON uses this form (:class:`observer.core.records.EmbeddingRecord`).

>>> text = to_base64([0.5, -1.0, 0.25])
>>> text, from_base64(text)
('AAAAPwAAgL8AAIA+', [0.5, -1.0, 0.25])
>>> from_base64("AAAAPwAA")
Traceback (most recent call last):
...
ValueError: an embedding in base64 must hold whole float32 values (got 6 bytes)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np

MAX_DIMENSION = 65536
FLOAT32 = np.dtype("<f4")


def to_base64(vector: Sequence[float] | np.ndarray) -> str:
    """``vector`` as base64 of its little-endian float32 values."""
    return base64.b64encode(np.asarray(vector, dtype=FLOAT32).tobytes()).decode("ascii")


def finite(vector: Sequence[float]) -> bool:
    """True when every value of ``vector`` is a finite float (in one vectorised pass).

    >>> finite([0.5, -1.0]), finite([0.5, float("nan")]), finite([1e308, -1e308])
    (True, False, True)
    """
    return bool(np.isfinite(np.asarray(vector, dtype=np.float64)).all())


def from_base64(text: str) -> list[float]:
    """The floats of a :func:`to_base64` text, every one finite; a clear ``ValueError`` for
    anything else.

    Checked as the float32 array it is, before it becomes a list: a record's decode does no
    second pass over the values (a list back into numpy cost more than the base64 itself).

    >>> from_base64(to_base64([float("inf")]))
    Traceback (most recent call last):
    ...
    ValueError: embedding values must be finite
    >>> from_base64("AAAA Pw==")
    Traceback (most recent call last):
    ...
    ValueError: an embedding string is not base64
    """
    if len(text) > (MAX_DIMENSION * 4 + 2) // 3 * 4:
        raise ValueError(f"an embedding in base64 is longer than {MAX_DIMENSION} dimensions")
    try:
        # strict_mode: the alphabet only, padding only at the end (b64decode's validate=True
        # checks the same with a regular expression, several times slower).
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("an embedding string is not base64") from None
    if len(raw) % 4:
        raise ValueError(f"an embedding in base64 must hold whole float32 values "
                         f"(got {len(raw)} bytes)")
    values = np.frombuffer(raw, dtype=FLOAT32)
    if not np.isfinite(values).all():
        raise ValueError("embedding values must be finite")
    return values.astype(np.float64).tolist()  # type: ignore[no-any-return]
