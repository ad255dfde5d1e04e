"""The one interface every embedder offers: :class:`Embedder`.

An embedder turns texts into an ``(n, dimension)`` float32 array whose rows are L2-normalised
(an empty text gives a zero row). Its :attr:`~Embedder.id` names the vector space: vectors
with different ids are never compared (the drift engine keys its streams by it), so it must
change whenever the vectors would (another model, dimension, seed or feature set).

>>> import numpy as np
>>> class Ones:
...     id, dimension = "ones/2", 2
...     def embed(self, texts):
...         return np.full((len(texts), 2), 2 ** -0.5, dtype=np.float32)
>>> isinstance(Ones(), Embedder)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Texts to vectors: ``embed(texts)`` is ``(len(texts), dimension)`` float32, rows of norm
    1 (0 for an empty text)."""

    @property
    def id(self) -> str:
        """The vector space's name, e.g. ``hashing-ngram-v1/256``."""
        ...

    @property
    def dimension(self) -> int:
        """The length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, in order."""
        ...


def l2_normalised(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (2-d) as float32 with each non-zero row scaled to norm 1.

    >>> l2_normalised(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
