"""The default embedder: hashed word and character n-grams, a seeded signed projection.

No weights, no fitting, no download: every text maps to the same vector in every process and
on every machine (a seeded polynomial hash, never Python's per-process ``hash()``). Features of a lower-cased text, each added with a sign to one of
``dimension`` buckets (the hashing trick, a fixed random projection of the feature space):

- word unigrams and bigrams (a word is a run of letters, digits or ``_``; any character past
  ASCII that is not a space or punctuation counts as a letter);
- character 3-, 4- and 5-grams (spaces included, so they also see word boundaries).

Vectorised per batch: the batch's code points are one numpy array (texts apart by NUL
padding); prefix sums of ``c[j] * B**j`` (uint64, wrapping) give every substring's hash as
``(H[i+n] - H[i]) * B**-i`` (``B`` odd, from the seed); one multiply by a seeded odd salt per
feature family mixes it, and its top bits give the bucket and the sign; one ``np.bincount``
over ``(row, bucket, sign)`` slots per family adds all features of all texts (word unigrams and
bigrams weigh 1, character n-grams 0.5). Texts are hashed in chunks of about 64k characters,
so the arrays stay in cache. Where the install built ``collectors/normalize/_text_scan.c``, one
C pass per text counts the same features (the same vectors, bit for bit, a few times faster).

>>> e = HashingEmbedder()
>>> e.id, e.dimension
('hashing-ngram-v1/256', 256)
>>> v = e.embed(["How do I reset my password?", "how do i reset my PASSWORD?", ""])
>>> v.shape, v.dtype, round(float(v[0] @ v[0]), 5), bool((v[0] == v[1]).all()), float(v[2].sum())
((3, 256), dtype('float32'), 1.0, True, 0.0)
>>> HashingEmbedder(dimension=64, seed=7).id
'hashing-ngram-v1/64/seed=7'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from observer.collectors.normalize.embedders.protocol import l2_normalised

try:  # built by the install when a C compiler is at hand (pyproject.toml, ext-modules)
    from observer.collectors.normalize import _text_scan as native
except ImportError:  # the NumPy version below: the same vectors, a few times slower
    native = None

VERSION = "hashing-ngram-v1"
"""Part of every id: change it whenever the features or the hash change (new vectors)."""
CHAR_NGRAMS = (3, 4, 5)
# Family -> weight: character n-grams are many times as many as words, so they weigh less; a
# bigram carries order, which unigrams and short n-grams miss.
WEIGHTS = {"char": 0.5, "word": 1.0}  # word: unigrams and bigrams alike

CHUNK_CHARS = 65536
"""Characters hashed in one go (see :meth:`HashingEmbedder.embed`)."""
PAD = 4
"""NULs after each text: the longest character n-gram less one (a power of two)."""
_PAD_BITS = 2

_M64 = (1 << 64) - 1
_U = np.uint64


def splitmix64_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (seeds and salts).

    >>> splitmix64_int(0)
    16294208416658607535
    """
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """:func:`splitmix64_int` on a uint64 array (wrapping arithmetic)."""
    x = x + _U(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U(27))) * _U(0x94D049BB133111EB)
    return x ^ (x >> _U(31))


# Past ASCII: these ranges are spaces and punctuation (Latin-1 punctuation, General
# Punctuation, CJK symbols and punctuation, full-width forms' punctuation); the rest is letters.
_NON_WORD_RANGES = ((0x80, 0xBF), (0x2000, 0x206F), (0x3000, 0x303F), (0xFF00, 0xFF0F))


def _word_table() -> np.ndarray:
    """Code point (Basic Multilingual Plane) -> is a word character; past it (emoji, rare
    scripts), code points are looked up at U+FFFF, a letter."""
    table = np.ones(0x10000, dtype=bool)
    table[:128] = False
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
        table[ord(c)] = True
    for lo, hi in _NON_WORD_RANGES:
        table[lo:hi + 1] = False
    return table


_WORD = _word_table()
_WORD_BYTES = _WORD.tobytes()  # for the C version: one byte (0 or 1) per code point


class HashingEmbedder:
    """The default :class:`~observer.collectors.normalize.embedders.protocol.Embedder`.

    ``max_chars`` caps the characters of a text that are embedded (its start): the cost stays
    bounded whatever a client sends.
    """

    def __init__(self, dimension: int = 256, seed: int = 0, max_chars: int = 4000) -> None:
        if not 1 <= dimension <= 65536:
            raise ValueError(f"hashing embedder dimension {dimension} is not in 1..65536")
        self._dimension = dimension
        self.seed = seed
        self.max_chars = max_chars
        self._id = f"{VERSION}/{dimension}" + (f"/seed={seed}" if seed else "")
        base = splitmix64_int(seed & _M64) | 1  # odd: invertible modulo 2**64
        self._base = base
        self._inverse = pow(base, -1, 1 << 64)
        # Per family (and n-gram length) salt: "the" as a word and as a 3-gram differ.
        # Odd: multiplying by a salt is a bijection, so it mixes without losing bits.
        self._salts = {key: _U(splitmix64_int((seed * 1_000_003 + i) & _M64) | 1)
                       for i, key in enumerate((*CHAR_NGRAMS, "word", "bigram"))}
        # For the C version: B**1..4 (one n-gram's hash, Horner-free) and the five salts.
        self._native_powers = tuple(pow(base, k, 1 << 64) for k in range(1, 5))
        self._native_salts = tuple(int(self._salts[key])
                                   for key in (*CHAR_NGRAMS, "word", "bigram"))
        self._powers = np.ones(1, dtype=np.uint64)
        self._inverse_powers = np.ones(1, dtype=np.uint64)

    @property
    def id(self) -> str:
        return self._id

    @property
    def dimension(self) -> int:
        return self._dimension

    def _grow(self, length: int) -> None:
        """``B**j`` and ``B**-j`` for j <= length, kept for later batches."""
        have = len(self._powers)
        if have > length:
            return
        size = max(length + 1, 2 * have)
        with np.errstate(over="ignore"):
            self._powers = np.cumprod(
                np.concatenate([[_U(1)], np.full(size - 1, self._base, dtype=np.uint64)]),
                dtype=np.uint64)
            self._inverse_powers = np.cumprod(
                np.concatenate([[_U(1)], np.full(size - 1, self._inverse, dtype=np.uint64)]),
                dtype=np.uint64)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text: texts are hashed in chunks of about :data:`CHUNK_CHARS`
        characters, whose arrays stay in the CPU's cache (one huge pass over a whole batch
        is several times slower per character)."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        if native is not None:
            return self._embed_native(texts)
        chunks, start, size = [], 0, 0
        for i, text in enumerate(texts):
            size += min(len(text), self.max_chars) + PAD
            if size >= CHUNK_CHARS:
                chunks.append(self._embed(texts[start:i + 1]))
                start, size = i + 1, 0
        if start < len(texts):
            chunks.append(self._embed(texts[start:]))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _embed_native(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`_embed` in C: the same counts and weighted sums (exact: integers and halves),
        so after the same :func:`l2_normalised`, the same vectors, bit for bit."""
        rows = np.empty((len(texts), self._dimension), dtype=np.float32)
        native.ngram_rows([t[: self.max_chars].lower().replace("\x00", " ") for t in texts],
                          _WORD_BYTES, self._native_powers, self._native_salts, self._dimension,
                          WEIGHTS["char"], WEIGHTS["word"], rows)
        return l2_normalised(rows)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        n, dim = len(texts), self._dimension
        # Every text is followed by PAD NULs (a NUL inside a text becomes a space): an n-gram
        # starting in a text ends in it or in its own padding, never in the next text, so
        # every position is hashed with contiguous slices, no gathers; n-grams starting on a
        # NUL land in row n, dropped at the end.
        pad = "\x00" * PAD
        joined = pad.join(t[: self.max_chars].lower().replace("\x00", " ")
                          for t in texts) + pad
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        length = len(points)
        self._grow(length)
        separator = points == 0
        slots = 2 * dim  # per row: (bucket, sign) pairs, counted without weights
        row = (np.cumsum(separator) - separator) >> _PAD_BITS
        row[separator] = n
        row_base = row * slots
        with np.errstate(over="ignore"):
            prefix = np.zeros(length + 1, dtype=np.uint64)
            np.cumsum((points.astype(np.uint64) + _U(1)) * self._powers[:length], out=prefix[1:])

            def slot(h: np.ndarray, salt: str | int) -> np.ndarray:
                # One odd multiply (seeded per family) mixes every bit of h into the top bits;
                # their top 24 scaled to 2 * dim (multiply-shift) give bucket and sign.
                top = ((h * self._salts[salt]) >> _U(40)) * _U(slots) >> _U(24)
                return top.view(np.int64)

            chars = [row_base[: length - size + 1]
                     + slot((prefix[size:] - prefix[: length - size + 1])
                            * self._inverse_powers[: length - size + 1], size)
                     for size in CHAR_NGRAMS if length >= size]

            word = _WORD[np.minimum(points, 0xFFFF)]
            edges = np.diff(word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
            starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            words: list[np.ndarray] = []
            if len(starts):
                h = ((prefix[ends] - prefix[starts]) * self._inverse_powers[starts]
                     + (ends - starts).astype(np.uint64) * _U(0x9E3779B97F4A7C15))
                mixed = _splitmix64(h)  # mixed whole: a bigram combines two of them
                word_rows = row[starts]
                words.append(word_rows * slots + slot(mixed, "word"))
                same = np.flatnonzero(word_rows[1:] == word_rows[:-1])
                pairs = mixed[same] * _U(0xD6E8FEB86659FD93) + mixed[same + 1]
                words.append(word_rows[same] * slots + slot(pairs, "bigram"))
        size = (n + 1) * slots
        counts = (WEIGHTS["char"] * _count(chars, size)
                  + WEIGHTS["word"] * _count(words, size))[: n * slots].reshape(n, dim, 2)
        return l2_normalised(counts[:, :, 0] - counts[:, :, 1])


def _count(slots: list[np.ndarray], size: int) -> np.ndarray:
    """How often each of ``size`` slots occurs in ``slots``."""
    if not slots:
        return np.zeros(size)
    return np.bincount(np.concatenate(slots), minlength=size)
