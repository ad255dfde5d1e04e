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
    """The floats of a :func:`to_base64` text; a clear ``ValueError`` for anything else."""
    if len(text) > (MAX_DIMENSION * 4 + 2) // 3 * 4:
        raise ValueError(f"an embedding in base64 is longer than {MAX_DIMENSION} dimensions")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an embedding string is not base64") from None
    if len(raw) % 4:
        raise ValueError(f"an embedding in base64 must hold whole float32 values "
                         f"(got {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=FLOAT32).astype(np.float64).tolist()  # type: ignore[no-any-return]
