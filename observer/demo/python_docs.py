"""Real text with a planted topic shift at equal lengths: the demo's documentation assistant,
the semantic drift tests and the detection benchmark (benchmarks/semantic_detection.py).

The text ships offline with every CPython: ``pydoc_data.topics``, the Python Language
Reference's help topics (what ``help("for")`` prints; about 465,000 characters in 79 topics).
No download, no hub, the same bytes wherever this runs with the same Python minor version.

Two subjects are drawn from it:

- ``control``: statements and control flow (``if``, ``for``, ``while``, ``try``, ``with``,
  ``return``, ``raise``, ``import``...): the reference subject;
- ``data``: numbers and data types (``numbers``, ``integers``, ``floating``, ``dict``,
  ``typesseq``, ``string-methods``...): what users move to.

A record is a (prompt, answer) pair of consecutive word runs of one topic's prose (code
examples and grammar rules left out). The shifted stream is length-matched record by record:
each shifted prompt and answer has exactly the word count of its reference counterpart and
its character count within 2% (:func:`matched_stream`), so words, characters and token counts
stay level and only the meaning changes.

>>> rng = np.random.default_rng(0)
>>> ref = stream(prose(CONTROL), 3, rng)
>>> shifted = matched_stream(ref, prose(DATA), rng)
>>> [len(p.split()) for p, _ in ref] == [len(p.split()) for p, _ in shifted]
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

CONTROL = ("assert", "break", "compound", "continue", "del", "else", "for", "global", "if",
           "import", "nonlocal", "pass", "raise", "return", "try", "while", "with", "yield",
           "exceptions", "execmodel", "naming", "function", "class", "async", "context-managers")
"""The reference subject: statements and control flow."""
DATA = ("numbers", "integers", "floating", "imaginary", "numeric-types", "typesseq",
        "typesseq-mutable", "typesmapping", "dict", "lists", "string-methods", "strings",
        "formatstrings", "binary", "bitwise", "shifting", "power", "unary", "comparisons",
        "booleans", "truth", "sequence-types", "slicings", "conversions", "floating")
"""The shifted subject: numbers and data types."""

_CODEY = re.compile(r"[>{}=\[\]|]|::=|\.\.\.")
Pair = tuple[str, str]


def prose(topics: Sequence[str]) -> list[str]:
    """The words of the topics' prose paragraphs, in order (indented examples and lines that
    look like code or grammar are left out)."""
    from pydoc_data.topics import topics as help_topics  # stdlib, shipped with CPython

    words: list[str] = []
    for name in dict.fromkeys(topics):
        for para in re.split(r"\n\s*\n", help_topics.get(name, "")):
            if not para.startswith(("   ", "\t")) and not _CODEY.search(para):
                # Heading underlines (*****, =====) are layout, not words.
                words.extend(w for w in para.split() if any(ch.isalnum() for ch in w))
    return words


def _lengths(rng: np.random.Generator) -> tuple[int, int]:
    # Prompt and answer word counts like short chat turns: 6-40 and 8-60 words.
    return int(rng.integers(6, 41)), int(rng.integers(8, 61))


def words_run(words: Sequence[str], n: int, rng: np.random.Generator) -> str:
    """A run of ``n`` consecutive words from a random place in ``words``."""
    i = int(rng.integers(len(words) - n))
    return " ".join(words[i:i + n])


def stream(words: Sequence[str], n: int, rng: np.random.Generator) -> list[Pair]:
    """``n`` (prompt, answer) pairs of random lengths from ``words``."""
    out = []
    for _ in range(n):
        np_, na = _lengths(rng)
        out.append((words_run(words, np_, rng), words_run(words, na, rng)))
    return out


def length_matched(text: str, words: Sequence[str], rng: np.random.Generator, tries: int = 400) -> str:
    """A run of ``words`` with ``text``'s word count and its character count within 2%."""
    n, chars = len(text.split()), len(text)
    best, gap = "", None
    for _ in range(tries):
        candidate = words_run(words, n, rng)
        g = abs(len(candidate) - chars)
        if gap is None or g < gap:
            best, gap = candidate, g
        if g <= max(1, 0.02 * chars):
            break
    return best


def matched_stream(like: Sequence[Pair], words: Sequence[str], rng: np.random.Generator) -> list[Pair]:
    """One pair of ``words`` per pair of ``like``, each side length-matched to it."""
    return [(length_matched(p, words, rng), length_matched(a, words, rng)) for p, a in like]
