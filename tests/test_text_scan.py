"""The normaliser's C text scanner (``collectors/normalize/_text_scan.c``) against the Python
it stands in for: the same text descriptors and the same embedding vectors, bit for bit, on
random and multilingual texts; without the extension the stage runs the same; hostile input
(lone surrogates, NULs, 10 MB, wrong arguments) is an answer or a clear error, never a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from observer.collectors.normalize import text_descriptors
from observer.collectors.normalize.embedders import hashing
from observer.collectors.normalize.embedders.hashing import HashingEmbedder
from observer.collectors.normalize.text_descriptors import describe

from tests.test_text_descriptors import KNOWN

ROOT = Path(__file__).resolve().parent.parent

# Characters that take each branch of the scanner: white space of every kind, sentence ends
# of every script, marks, CJK and kana, astral Han and emoji, digits of other scripts, lone
# surrogates, NUL, characters whose lowercase is longer (İ), and link and JSON openers.
SPECIAL = (" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000.!?…。！？؟।_-’'\"{}[]`:/w"
           "aZé\u0300\u093f\u0915ж你かカ한ʼ١²½𠀀𪚥😀\ud800\udfff\x00İǅß")
TEXT = (st.text(st.sampled_from(SPECIAL), max_size=200)
        | st.text(st.sampled_from(SPECIAL) | st.characters(codec=None), max_size=80))
TEXTS = st.lists(TEXT, max_size=6)
MULTILINGUAL = [*KNOWN, "I'm sorry, but I can't help with that.", "申し訳ありませんが、できません。",
                "Hello.\tWorld!\x1cAgain?  ", "a . . ", "x\u3000", "𠀀𠀁 abc 你好", "İstanbul"]


@contextmanager
def python_path() -> Iterator[None]:
    """The pure-Python descriptors and embedder, as when the extension is not built."""
    built = text_descriptors.native, hashing.native
    text_descriptors.native = hashing.native = None
    try:
        yield
    finally:
        text_descriptors.native, hashing.native = built


def test_the_c_extension_is_built() -> None:
    # Without it, every comparison below would test the Python path against itself.
    assert text_descriptors.native is not None, "collectors.normalize._text_scan was not built"
    assert hashing.native is text_descriptors.native


def test_known_and_multilingual_texts_are_described_alike() -> None:
    in_c = [describe(t) for t in MULTILINGUAL]
    with python_path():
        assert [describe(t) for t in MULTILINGUAL] == in_c


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_c_and_python_descriptors_are_identical(text: str) -> None:
    shape = text_descriptors._shape(text)
    assert shape == text_descriptors._shape_python(text), repr(text)


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.sampled_from([(256, 0, 4000), (64, 7, 50), (3, 1, 2)]))
def test_c_and_python_vectors_are_bit_identical(texts: list[str],
                                                 setup: tuple[int, int, int]) -> None:
    dimension, seed, max_chars = setup
    embedder = HashingEmbedder(dimension, seed, max_chars)
    in_c = embedder.embed(texts)
    with python_path():
        in_python = embedder.embed(texts)
    assert in_c.dtype == in_python.dtype == np.float32
    assert in_c.tobytes() == in_python.tobytes()


def test_multilingual_vectors_are_bit_identical() -> None:
    embedder = HashingEmbedder()
    in_c = embedder.embed(MULTILINGUAL * 30)  # past one NumPy chunk of the Python path
    with python_path():
        assert embedder.embed(MULTILINGUAL * 30).tobytes() == in_c.tobytes()


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.text(st.sampled_from(SPECIAL), max_size=4), max_size=12))
def test_starts_in_finds_what_in_finds(text: str, starts: list[str]) -> None:
    found = text_descriptors.native.starts_in(text, tuple(starts))
    assert found == [i for i, start in enumerate(starts) if start in text]


REFUSALS = ["I'm sorry, but I can't help with that.", "Lo siento, pero no puedo hacerlo.",
            "申し訳ありませんが、その質問にはお答えできません。", "Ich kann Ihnen dabei nicht helfen.",
            "As an AI, I cannot", "Sure! Here it is.", "Извините, но я не могу помочь."]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(REFUSALS) | TEXT, max_size=3).map(" ".join))
def test_c_and_python_refusal_agree(text: str) -> None:
    refusal = text_descriptors.DEFAULT_REFUSAL
    assert refusal.scan
    in_c = refusal.search(text)
    with python_path():
        assert refusal.search(text) == in_c


def test_a_refusal_table_past_the_c_limit_is_searched_in_python() -> None:
    many = {"xx": [f"zz{i} no" for i in range(text_descriptors.native.MAX_STARTS)] + ["i refuse"]}
    refusal = text_descriptors.Refusal(many)
    assert not refusal.scan and refusal.search("Well, I refuse.")


def test_hostile_text_is_scanned_never_a_crash() -> None:
    native = text_descriptors.native
    table, names = text_descriptors._scan_table(), text_descriptors.SCRIPT_NAMES
    huge = "word. \x00\ud800𠀀 " * 1_000_000  # 10 million characters, every kind of them
    tokens, _, sentences, visible, letters, counts = native.shape(huge, table, names)
    assert (tokens, sentences, visible) == (2_000_000, 1_000_001, 8_000_000)
    assert counts is not None and letters == 5_000_000 == sum(counts.values())
    assert native.starts_in(huge, ("zz", "\ud800𠀀", "", "𠀀 w", "s")) == [1, 2, 3]
    rows = np.empty((2, 8), dtype=np.float32)
    native.ngram_rows([huge, ""], hashing._WORD_BYTES, (3, 9, 27, 81), (1, 3, 5, 7, 9), 8,
                      0.5, 1.0, rows)
    assert np.isfinite(rows).all() and not rows[1].any()
    assert describe("\ud800" * 10 + "\x00").words == 1


@pytest.mark.parametrize("call, problem", [
    (lambda n: n.shape("x", b"short", ("latin",)), "65536 bytes"),
    (lambda n: n.starts_in("x", ("a", b"b")), "str"),
    (lambda n: n.starts_in("x", ("a",) * (n.MAX_STARTS + 1)), "more than"),
    (lambda n: n.shape(b"x", bytes(65536), ("latin",)), "str"),
    (lambda n: n.shape("x", bytes(65536), ("latin",) * 500), "65536 bytes"),
    (lambda n: n.shape("x", bytes(65536), ["latin"]), "tuple"),
    (lambda n: n.ngram_rows(["x"], bytes(65536), (1, 1, 1, 1), (1, 1, 1, 1, 1), 4, 0.5, 1.0,
                            np.empty(3, np.float32)), "output size"),
    (lambda n: n.ngram_rows(["x"], bytes(65536), (1, 1, 1), (1, 1, 1, 1, 1), 4, 0.5, 1.0,
                            np.empty(4, np.float32)), "powers"),
    (lambda n: n.ngram_rows([b"x"], bytes(65536), (1, 1, 1, 1), (1, 1, 1, 1, 1), 4, 0.5, 1.0,
                            np.empty(4, np.float32)), "str"),
    (lambda n: n.ngram_rows(["x"], bytes(65536), (1, 1, 1, 1), (1, 1, 1, 1, 1), 4, 0.5, 1.0,
                            b"\x00" * 16), "read-write"),
    (lambda n: n.ngram_rows(["x"], b"", (1, 1, 1, 1), (1, 1, 1, 1, 1), 4, 0.5, 1.0,
                            np.empty(4, np.float32)), "table"),
])
def test_wrong_arguments_are_clear_errors(call, problem: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=problem):
        call(text_descriptors.native)


# The stage in a child with the extension's import blocked: the same outputs, and a warning.
CHILD = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "observer.collectors.normalize._text_scan":
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
from tests.test_text_scan import outputs
from observer.collectors.normalize import text_descriptors
from observer.collectors.normalize.embedders import hashing
assert text_descriptors.native is None and hashing.native is None
print(json.dumps(outputs()))
"""


def outputs() -> list[list[str]]:
    """A normaliser's outputs, descriptors and embeddings on, for benchmark-like spans."""
    from observer.collectors.normalize.config import EmbeddingsConfig
    from observer.collectors.normalize.normalizer import Normalizer

    from benchmarks.normalizer_semantic import TOPICS, messages

    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig())
    return [[o.topic, o.key or "", o.value.decode()] for o in normalizer.process(messages(60))]


def test_without_the_extension_the_stage_runs_the_same() -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=True)
    assert "_text_scan (C) is not built" in child.stderr
    here = outputs()
    assert json.loads(child.stdout) == here
    assert {topic for topic, _, _ in here} >= {"observer.llm", "observer.embeddings"}
