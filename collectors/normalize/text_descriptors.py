"""Text descriptors: cheap numbers that describe a prompt or an answer without keeping it.

From one side's text (:func:`observer.collectors.normalize.message_content.texts`) the
normaliser computes, with no model and no download, since it runs on every span (in one pass
of ``collectors/normalize/_text_scan.c`` where the install built it; else with ``str`` and
``bytes`` methods and one NumPy table lookup, the same numbers a few times slower):

- ``words``: whitespace-separated words; in a text with Chinese or Japanese, which put no
  spaces between words, each Han or kana character is a word, and so is each run of other
  letters and digits;
- ``sentences``: sentence ends inside the text (``. ! ?`` followed by a space or line break,
  and the CJK, Arabic and Devanagari full stops), plus the last sentence; 0 for a blank text;
- ``non_letter_share``: the share of non-space characters that are not letters (combining
  marks count as letters, so Devanagari vowel signs do), 0.0 for a blank text;
- ``refusal``: whether a refusal phrase (:data:`REFUSAL_PATTERNS`) occurs in the first
  :data:`REFUSAL_WINDOW` characters;
- ``json_valid``: the whole text (one Markdown code fence allowed) is a JSON object or array;
  None past :data:`MAX_JSON_CHARS`;
- ``links``: ``http(s)://`` and ``www.`` links (``://`` or ``www.`` first, as written);
- ``script``: the dominant Unicode script of the letters (:data:`SCRIPTS`), ``mixed`` when
  none has :data:`DOMINANT_SHARE` of them, ``none`` when there are no letters. Japanese mixes
  Han and kana: when kana reach :data:`KANA_SHARE` of the letters, Han counts as ``kana``.

Texts longer than :data:`MAX_DESCRIBED_CHARS` are described by their beginning.

>>> d = describe("Hello world. Visit https://example.com today!")
>>> d.words, d.sentences, d.links, d.script, d.refusal, d.json_valid
(5, 2, 1, 'latin', False, False)
>>> describe("Привет, мир!").script, describe("你好，世界。").words, describe("42 + 7").script
('cyrillic', 4, 'none')
>>> describe("I'm sorry, but I can't help with that.").refusal
True
>>> describe('```json\\n{"a": [1, 2]}\\n```').json_valid
True
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:  # built by the install when a C compiler is at hand (pyproject.toml, ext-modules)
    from observer.collectors.normalize import _text_scan as native
except ImportError:  # the same numbers from str, bytes and NumPy methods, a few times slower
    native = None

MAX_DESCRIBED_CHARS = 100_000
"""Characters of a side that are described: enough for any prompt, and a bound on the cost of
a hostile one."""
MAX_JSON_CHARS = 1_000_000
"""Longer texts are not parsed: ``json_valid`` is None."""
REFUSAL_WINDOW = 200
"""A refusal opens an answer; searching only its beginning keeps "I can't stress enough" in
the tenth paragraph from counting (and the search cheap)."""
DOMINANT_SHARE = 0.6
"""The share of the letters one script needs to be the text's script; below it, ``mixed``."""
KANA_SHARE = 0.05
"""Kana are written only in Japanese: from this share of the letters on, Han counts as kana."""

# Refusal phrases per language: regular expressions matched against the lowercased text, with
# ’ read as '. The configuration (``normalizer.refusal_patterns``) adds languages or replaces a
# language's list. Each starts with a literal: a pattern runs only where its literal start
# occurs (one C pass finds which do), which keeps the ~35 patterns cheap on every span.
REFUSAL_PATTERNS: dict[str, tuple[str, ...]] = {
    "en": (r"i'm (?:so )?(?:sorry|afraid)\b.{0,60}?\b(?:cannot|can't|unable|won't)\b",
           r"i am (?:so )?(?:sorry|afraid)\b.{0,60}?\b(?:cannot|can't|unable|won't)\b",
           r"sorry, (?:but )?i (?:cannot|can't|won't)\b",
           r"i cannot (?:help|assist|comply|provide|do that|fulfil)",
           r"i can't (?:help|assist|comply|provide|do that|fulfil)",
           r"i won't (?:be able to )?(?:help|assist|comply|provide)",
           r"i'm (?:not able|unable) to (?:help|assist|comply|provide)",
           r"i am (?:not able|unable) to (?:help|assist|comply|provide)",
           r"as an ai(?: language model)?, i\b"),
    "de": (r"ich kann (?:ihnen |dir )?(?:dabei |hierbei |damit )?nicht (?:helfen|behilflich)",
           r"tut mir leid,? (?:aber )?ich kann\b",
           r"ich bin nicht in der lage\b"),
    "fr": (r"je ne peux pas (?:vous )?(?:aider|répondre|fournir|accéder)",
           r"désolé(?:e)?,? (?:mais )?je ne (?:peux|suis) pas\b",
           r"je ne suis pas en mesure de\b"),
    "es": (r"no puedo (?:ayudar|proporcionar|cumplir|responder|ofrecer)",
           r"lo siento,? (?:pero )?no puedo\b",
           r"no estoy en condiciones de\b"),
    "pt": (r"não posso (?:ajudar|fornecer|responder|atender)",
           r"desculpe,? (?:mas )?não (?:posso|consigo)\b",
           r"lamento,? (?:mas )?não (?:posso|consigo)\b"),
    "it": (r"non posso (?:aiutar|fornire|rispondere|soddisfare)",
           r"mi dispiace,? (?:ma )?non (?:posso|sono in grado)\b",
           r"non sono in grado di\b"),
    "zh": (r"抱歉.{0,12}(?:无法|不能)", r"对不起.{0,12}(?:无法|不能)",
           r"我无法(?:帮助|协助|提供|回答|满足)", r"我不能(?:帮助|协助|提供|回答|满足)"),
    "ja": (r"申し訳(?:ありません|ございません).{0,30}(?:できません|いたしかねます)",
           r"できかねます", r"お手伝いできません", r"お答えできません", r"対応できません",
           r"ご要望にはお応えできません"),
    "ru": (r"я не могу (?:помочь|предоставить|ответить|выполнить)",
           r"извините,? (?:но )?я не (?:могу|в состоянии)\b",
           r"к сожалению,? (?:но )?я не (?:могу|в состоянии)\b"),
}

# Script of a letter: (first code point, last code point, script), sorted, not overlapping.
SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00AA, 0x00AA, "latin"),
    (0x00BA, 0x00BA, "latin"), (0x00C0, 0x024F, "latin"), (0x0250, 0x02AF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x0400, 0x052F, "cyrillic"), (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"),
    (0x08A0, 0x08FF, "arabic"), (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"),
    (0x0A00, 0x0A7F, "gurmukhi"), (0x0A80, 0x0AFF, "gujarati"), (0x0B80, 0x0BFF, "tamil"),
    (0x0C00, 0x0C7F, "telugu"), (0x0C80, 0x0CFF, "kannada"), (0x0D00, 0x0D7F, "malayalam"),
    (0x0E00, 0x0E7F, "thai"), (0x10A0, 0x10FF, "georgian"), (0x1100, 0x11FF, "hangul"),
    (0x1C80, 0x1C8F, "cyrillic"), (0x1E00, 0x1EFF, "latin"), (0x1F00, 0x1FFF, "greek"),
    (0x2DE0, 0x2DFF, "cyrillic"), (0x2E80, 0x2FDF, "han"), (0x3005, 0x3007, "han"),
    (0x3040, 0x30FF, "kana"), (0x3130, 0x318F, "hangul"), (0x31F0, 0x31FF, "kana"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xA640, 0xA69F, "cyrillic"),
    (0xAC00, 0xD7AF, "hangul"), (0xF900, 0xFAFF, "han"), (0xFB1D, 0xFB4F, "hebrew"),
    (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"), (0xFF21, 0xFF3A, "latin"),
    (0xFF41, 0xFF5A, "latin"), (0xFF66, 0xFF9F, "kana"), (0x20000, 0x3FFFF, "han"),
)
_STARTS = [start for start, _, _ in SCRIPTS]
SCRIPT_NAMES: tuple[str, ...] = ("other", *sorted({name for _, _, name in SCRIPTS}))
# Character classes of the lookup table: then one class per script, in SCRIPT_NAMES order.
_SPACE, _NON_LETTER, _MARK, _FIRST_SCRIPT = 0, 1, 2, 3
_HAN = _FIRST_SCRIPT + SCRIPT_NAMES.index("han")
_KANA = _FIRST_SCRIPT + SCRIPT_NAMES.index("kana")
_ASTRAL_HAN = (0x20000, 0x3FFFF)

_ASCII_WHITESPACE = string.whitespace + "\x1c\x1d\x1e\x1f"  # what str.isspace() says
_ASCII_SPACE_AND_LETTERS = (_ASCII_WHITESPACE + string.ascii_letters).encode()
_ASCII_SENTENCE_TABLE = bytes.maketrans(
    (_ASCII_WHITESPACE + "!?").encode(), (" " * len(_ASCII_WHITESPACE) + "..").encode()
)
_ENDS = (". ", ".\n", "! ", "!\n", "? ", "?\n", "。", "！", "？", "؟", "।")
_TERMINAL = ".!?。！？؟।…"
_CJK = "\u2e80-\u2fdf\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_NON_CJK_WORD = re.compile(rf"[^\W_{_CJK}]+")
_LINK = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"'()\[\]]+")
_JSON_START = re.compile(r"\s*[\[{`]")
_FENCE = re.compile(r"\A```[\w-]*\s*\n(.*)\n\s*```\Z", re.DOTALL)


class Descriptors(NamedTuple):
    """The descriptors of one side's text (a tuple: built on every span, cheaply)."""

    words: int
    sentences: int
    non_letter_share: float
    refusal: bool
    json_valid: bool | None
    links: int
    script: str

    def fields(self, side: str) -> dict[str, Any]:
        """Record fields: ``<side>_words`` and so on.

        >>> describe("ok").fields("output")["output_words"]
        1
        """
        keys = _KEYS.get(side) or tuple(f"{side}_{name}" for name in self._fields)
        return dict(zip(keys, self))


_KEYS = {side: tuple(f"{side}_{name}" for name in Descriptors._fields)
         for side in ("input", "output")}


def script_of(code_point: int) -> str:
    """The script of a letter's code point (:data:`SCRIPTS`), ``other`` outside the table.

    >>> script_of(ord("ж")), script_of(ord("ひ")), script_of(ord("ᚠ"))
    ('cyrillic', 'kana', 'other')
    """
    i = bisect.bisect_right(_STARTS, code_point) - 1
    if i >= 0 and code_point <= SCRIPTS[i][1]:
        return SCRIPTS[i][2]
    return "other"


@functools.cache
def _classes() -> np.ndarray:
    """The class of every BMP character (built once, on the first non-ASCII text: ~20 ms)."""
    table = np.full(0x10000, _NON_LETTER, np.uint8)
    for code_point in range(0x10000):
        char = chr(code_point)
        if char.isspace():
            table[code_point] = _SPACE
        elif char.isalpha():
            table[code_point] = _FIRST_SCRIPT + SCRIPT_NAMES.index(script_of(code_point))
        elif unicodedata.category(char) in ("Mn", "Mc"):  # vowel signs, accents: part of a letter
            table[code_point] = _MARK
    return table


def _class_counts(text: str) -> np.ndarray:
    """How many characters of ``text`` fall in each class (spaces, non-letters, marks, scripts)."""
    # UTF-32 gives one code point per item; "surrogatepass" keeps lone surrogates (non-letters).
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    classes = _classes()[np.minimum(codes, 0xFFFF)]  # U+FFFF is a non-letter, like most astral
    if len(codes) and codes.max() > 0xFFFF:
        classes[(codes >= _ASTRAL_HAN[0]) & (codes <= _ASTRAL_HAN[1])] = _HAN
    return np.bincount(classes, minlength=_FIRST_SCRIPT + len(SCRIPT_NAMES))


def _dominant(scripts: dict[str, int]) -> str:
    letters = sum(scripts.values())
    if not letters:
        return "none"
    if scripts.get("kana", 0) >= KANA_SHARE * letters:
        scripts["kana"] = scripts.get("kana", 0) + scripts.pop("han", 0)
    script = max(scripts, key=scripts.__getitem__)
    return script if scripts[script] >= DOMINANT_SHARE * letters else "mixed"


@functools.cache
def _scan_table() -> bytes:
    """:func:`_classes`, with 0x80 on the characters :data:`_NON_CJK_WORD` takes: the table
    the C scanner reads (built once, on the first text)."""
    table = _classes().copy()
    every = "".join(map(chr, range(0x10000)))
    for match in _NON_CJK_WORD.finditer(every):  # the regular expression stays the definition
        table[match.start():match.end()] |= 0x80
    return table.tobytes()


def _shape(text: str) -> tuple[int, int, float, str]:
    """``(words, sentences, non_letter_share, script)``, in one C pass when it is built."""
    if native is None:
        return _shape_python(text)
    tokens, runs, sentences, visible, letters, scripts = native.shape(
        text, _scan_table(), SCRIPT_NAMES)
    if scripts is None:  # an ASCII text: its letters are a-z and A-Z
        words, script = tokens, ("latin" if letters else "none")
    else:
        cjk = scripts.get("han", 0) + scripts.get("kana", 0)
        words = cjk + runs if cjk else tokens
        script = _dominant(scripts)
    share = (visible - letters) / visible if visible else 0.0
    return words, sentences, share, script


def _shape_python(text: str) -> tuple[int, int, float, str]:
    """:func:`_shape` without the C scanner (the definition its tests compare to)."""
    text = text.rstrip()
    body = text.rstrip(_TERMINAL)  # the last sentence's end is not counted: it is the "+ 1"
    if text.isascii():  # the common case: bytes methods count in C
        raw = text.encode("ascii")
        # White space to " " and "!?" to ".": then a sentence end inside is b". ", once.
        spaced = raw.translate(_ASCII_SENTENCE_TABLE)
        spaces = spaced.count(b" ")
        visible = len(raw) - spaces
        # Runs of spaces to one (a few C passes; split() would make an object per word):
        # then each remaining space separates two words (the text is right-stripped).
        collapsed = spaced
        while b"  " in collapsed:
            collapsed = collapsed.replace(b"  ", b" ")
        gaps = spaces - (len(spaced) - len(collapsed)) - collapsed.startswith(b" ")
        words = gaps + 1 if visible else 0
        ends = collapsed.count(b". ")
        letters = visible - len(raw.translate(None, _ASCII_SPACE_AND_LETTERS))
        script = "latin" if letters else "none"
    else:
        counts = _class_counts(text)
        visible = int(len(text) - counts[_SPACE])
        letters = int(counts[_MARK] + counts[_FIRST_SCRIPT:].sum())
        scripts = {name: int(n) for name, n in zip(SCRIPT_NAMES, counts[_FIRST_SCRIPT:]) if n}
        cjk = int(counts[_HAN] + counts[_KANA])
        words = cjk + len(_NON_CJK_WORD.findall(text)) if cjk else len(text.split())
        ends = sum(body.count(end) for end in _ENDS)
        script = _dominant(scripts)
    sentences = ends + 1 if body.strip() else 0
    share = (visible - letters) / visible if visible else 0.0
    return words, sentences, share, script


def _json_valid(text: str) -> bool | None:
    if len(text) > MAX_JSON_CHARS:
        return None
    if not _JSON_START.match(text):  # most texts: decided by their first characters
        return False
    text = text.strip()
    if text.startswith("```"):
        fenced = _FENCE.match(text)
        text = fenced.group(1).strip() if fenced else text
    if text[:1] not in ("{", "["):
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, too many digits, nested too deep
        return False
    return True


def _links(text: str) -> int:
    if "://" not in text and "www." not in text:  # most texts: no regex pass at all
        return 0
    return len(_LINK.findall(text))


_REGEX_SYNTAX = frozenset("\\.^$*+?{}[]|()")


def literal_start(pattern: str) -> str:
    """The text every match of ``pattern`` starts with ("" when that is not plain to see).

    >>> literal_start(r"tut mir leid,? (?:aber)"), literal_start("a|b"), literal_start(r"\\bno")
    ('tut mir leid', '', '')
    """
    depth = 0
    for char in pattern:  # an alternation at the top level has no common start
        depth += (char == "(") - (char == ")")
        if char == "|" and depth == 0:
            return ""
    end = 0
    while end < len(pattern) and pattern[end] not in _REGEX_SYNTAX:
        end += 1
    if end < len(pattern) and pattern[end] in "?*{":  # the last literal is optional
        end -= 1
    return pattern[:max(end, 0)]


class Refusal:
    """Refusal phrases, searched in a text's beginning, lowercased, with ’ read as '.

    Each pattern is searched only where its :func:`literal_start` occurs. A pattern with no
    uppercase character matches the lowercased text as it would with ``re.IGNORECASE``, and
    faster; others (``[A-Z]``, ``\\S``) get the flag, and no literal-start shortcut.

    >>> Refusal({"nl": ["het spijt me"]}).search("Het spijt me, nee.")
    True
    """

    def __init__(self, patterns: Mapping[str, Sequence[str]]) -> None:
        # literal start -> patterns: one substring search per distinct start.
        self.by_start: dict[str, list[re.Pattern[str]]] = {}
        for phrases in patterns.values():
            for p in phrases:
                start, flags = (literal_start(p), 0) if p == p.lower() else ("", re.IGNORECASE)
                self.by_start.setdefault(start, []).append(re.compile(p, flags))
        # An ASCII text cannot hold a non-ASCII start: most texts skip those searches.
        self.ascii_starts = [s for s in self.by_start if s.isascii()]
        # The C scanner finds which starts occur in one pass (not one search per start).
        self.starts = tuple(self.by_start)
        self.scan = native is not None and len(self.starts) <= native.MAX_STARTS

    def search(self, text: str) -> bool:
        head = text[:REFUSAL_WINDOW].lower().replace("’", "'")
        if self.scan and native is not None:
            found: Iterable[str] = [self.starts[i] for i in native.starts_in(head, self.starts)]
        else:
            found = (s for s in (self.ascii_starts if head.isascii() else self.by_start)
                     if s in head)
        return any(p.search(head) for start in found for p in self.by_start[start])


DEFAULT_REFUSAL = Refusal(REFUSAL_PATTERNS)


def describe(text: str, refusal: Refusal = DEFAULT_REFUSAL) -> Descriptors:
    """The descriptors of one text (see the module's description).

    >>> describe("").script, describe("").non_letter_share, describe("Ja 12").non_letter_share
    ('none', 0.0, 0.5)
    >>> describe("नमस्ते दुनिया").script, describe("नमस्ते दुनिया").non_letter_share
    ('devanagari', 0.0)
    """
    json_valid = _json_valid(text)
    text = text[:MAX_DESCRIBED_CHARS]
    words, sentences, share, script = _shape(text)
    return Descriptors(words, sentences, share, refusal.search(text), json_valid,
                       _links(text), script)


class TextDescriptors:
    """The descriptor fields of a record, under one refusal table.

    ``refusal_patterns`` (language -> regular expressions) adds languages to
    :data:`REFUSAL_PATTERNS` and replaces the list of a language it names.

    >>> TextDescriptors({"en": []}).fields({"output": "I can't help with that."})["output_refusal"]
    False
    """

    def __init__(self, refusal_patterns: Mapping[str, Sequence[str]] | None = None) -> None:
        self.refusal = (Refusal({**REFUSAL_PATTERNS, **refusal_patterns}) if refusal_patterns
                        else DEFAULT_REFUSAL)

    def fields(self, texts: Mapping[str, str]) -> dict[str, Any]:
        """``input_*`` and ``output_*`` fields of the sides present in ``texts``."""
        out: dict[str, Any] = {}
        for side, text in texts.items():
            out.update(describe(text, self.refusal).fields(side))
        return out
