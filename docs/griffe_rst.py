"""A griffe extension for the API pages: the code base's docstrings are reST-flavoured
(``literal``, :mod:`x` roles, ``>>>`` doctests), which Markdown would show as stray colons and
nested quotes. Rewritten here, at render time, so the docstrings stay as pytest's doctests
need them.

>>> markdown_of(":func:`decode` picks ``schema``.\\n\\n>>> 1 + 1\\n2").splitlines()
['`decode` picks `schema`.', '', '```pycon', '>>> 1 + 1', '2', '```']
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
LITERAL = re.compile(r"``([^`]+)``")


def markdown_of(text: str) -> str:
    """Roles and double-backtick literals become code spans; each doctest block (``>>>``
    lines and their output, up to a blank line) becomes a fenced ``pycon`` block."""
    text = LITERAL.sub(r"`\1`", ROLE.sub(r"`\1`", text))
    out: list[str] = []
    in_doctest = False
    for line in text.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not in_doctest:
            out.append("```pycon")
            in_doctest = True
        elif in_doctest and not line.strip():
            out.append("```")
            in_doctest = False
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
