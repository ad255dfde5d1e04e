"""Every client value is hostile: the few checks each one passes before it enters a record.

The bounds live here, in one place, and every stage uses the same helpers:

=====================  ==========================================================  =========
what                   rule                                                        helper
=====================  ==========================================================  =========
counts (tokens...)     an integer, ``0 <= n <=`` :data:`MAX_COUNT`                  `count`
timestamps             Unix ns, ``0 <= t <=`` :data:`MAX_UNIX_NANO` (int64)         `count`
durations, latencies   finite, ``0 <= ms <=`` :data:`MAX_DURATION_MS`               `finite`
other numbers          finite (no NaN, no infinity)                                 `finite`
names (model, tool..)  a string, valid UTF-8, no control characters, at most        `text`
                       :data:`MAX_NAME_CHARS` characters
enumerations           one of the known values, else ``other``                      `enum`
=====================  ==========================================================  =========

A value that breaks its rule is *invalid*: an optional field is dropped (``None`` or its
default) and counted in ``observer_invalid_values_total{stage,field}`` (:func:`invalid`); a
value a record cannot do without (a trace id) sends its message to the dead-letter topic.
Wrong types (a string where a count belongs, arrays, maps, bytes, booleans) are invalid, never
coerced by accident: ``True`` is not 1 token.

>>> count(12), count("12"), count(-1), count(10**400), count(True), count(1.5)
(12, 12, None, None, None, None)
>>> finite(0.25), finite(float("nan")), finite(-1.0, min=0.0), finite("1e999")
(0.25, None, None, None)
>>> text("gpt-4o\\x00"), text(b"\\xffok"), len(text("x" * 1000))
('gpt-4o\ufffd', '\ufffdok', 256)
>>> enum("STOP", {"stop", "length"}), enum("??", {"stop"})
('stop', 'other')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

from prometheus_client import Counter

MAX_COUNT = 10**12
"""Largest count (tokens, characters, messages, instances) a record takes: far above any real
call, far below where float arithmetic or a Prometheus counter loses precision."""
MAX_UNIX_NANO = 2**63 - 1
"""Timestamps are int64 nanoseconds (OTLP's fixed64 may carry more; that is not a time)."""
MAX_DURATION_MS = 366 * 86_400_000.0
"""A year: longer durations and latencies are clock errors, not calls."""
MAX_NAME_CHARS = 256
"""Service, model, tool, agent names, finish reasons, error types, ids."""
MAX_DIGITS = 40
"""Decimal strings longer than this are not parsed as numbers (``int()`` of a huge string
is slow, and no valid count or timestamp has more digits)."""

INVALID_VALUES = Counter(
    "observer_invalid_values_total",
    "Client values dropped because they broke their field's rule (negative count, NaN, wrong "
    "type...), by stage and record field.",
    ["stage", "field"],
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def count(value: Any, max: int = MAX_COUNT) -> int | None:  # noqa: A002 (the brief's name)
    """A non-negative integer up to ``max`` from an int, an integral float or a decimal
    string; None for anything else (bool, fractions, NaN, huge, negative, other types).

    >>> count(12.0), count(" 7 "), count("1e3"), count(2**63), count(2**63, max=2**64)
    (12, 7, None, None, 9223372036854775808)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, str):
        digits = value.strip()
        value = int(digits) if 0 < len(digits) <= MAX_DIGITS and digits.isascii() \
            and digits.isdigit() else None
    if not isinstance(value, int) or not 0 <= value <= max:
        return None
    return value


def finite(  # noqa: A002 (min, max: the brief's names)
    value: Any, min: float | None = None, max: float | None = None
) -> float | None:
    """A finite float within ``[min, max]`` from a number or a numeric string; None otherwise.

    >>> finite(3), finite("2.5"), finite(10**400), finite(5.0, max=4.0), finite(True)
    (3.0, 2.5, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and len(value) > MAX_DIGITS:
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond a double's range
        return None
    if not math.isfinite(number):
        return None
    if (min is not None and number < min) or (max is not None and number > max):
        return None
    return number


def text(value: Any, max_chars: int = MAX_NAME_CHARS, *, newlines: bool = False) -> str:
    """A string safe to store and label with: valid UTF-8 (bad bytes and lone surrogates
    become U+FFFD), control characters replaced by U+FFFD (tab, newline and carriage return
    too unless ``newlines``), cut to ``max_chars``. Non-strings (numbers, lists...) give ``""``.

    >>> text("a\\tb"), text("a\\nb", newlines=True), text("\\ud800x"), text(7)
    ('a\ufffdb', 'a\\nb', '\ufffdx', '')
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: max_chars * 4]).decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    value = value[:max_chars]
    if value.isprintable():  # the common case, in C: no control characters, no surrogates
        return value
    value = _SURROGATE.sub("\ufffd", value)
    return (_CONTROL if newlines else _CONTROL_OR_NEWLINE).sub("\ufffd", value)


def enum(value: Any, known: Collection[str], other: str = "other") -> str:
    """``value`` lowercased when it is one of ``known``, else ``other``.

    >>> enum("Length", ("stop", "length")), enum(3, ("stop",)), enum("", ("stop",), other="")
    ('length', 'other', '')
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in known:
            return lowered
    return other


def invalid(stage: str, field: str) -> None:
    """Count one invalid value of ``field`` dropped by ``stage``."""
    INVALID_VALUES.labels(stage, field).inc()


_SCALARS = frozenset({int, str, bool, type(None)})
"""Types that hold no float: skipped without a recursive call."""


def non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite float inside ``value`` (dicts, lists), else None.

    >>> non_finite({"a": [1.0, {"b": float("inf")}]}), non_finite({"a": 1})
    ('a[1].b', None)
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "value"
    if isinstance(value, dict):
        pairs: Any = value.items()
    elif isinstance(value, (list, tuple)):
        pairs = enumerate(value)
    else:
        return None
    for k, item in pairs:
        kind = type(item)
        if kind in _SCALARS or (kind is float and math.isfinite(item)):
            continue  # most of a record: no path is built for them
        where = (f"{path}[{k}]" if isinstance(value, (list, tuple))
                 else f"{path}.{k}" if path else str(k))
        found = non_finite(item, where)
        if found is not None:
            return found
    return None


REJECTED: tuple[type[BaseException], ...] = (ValueError, ArithmeticError, RecursionError)
"""What checking and converting a hostile value can raise (pydantic's ValidationError,
UnicodeError and json's errors are ValueErrors; OverflowError an ArithmeticError; deeply
nested JSON a RecursionError). A processor catches these per input message and dead-letters
that message; anything else is a bug, left to the stage runner."""


def reason(error: BaseException) -> str:
    """The dead-letter reason of an error from :data:`REJECTED`.

    >>> reason(json.JSONDecodeError("x", "", 0)), reason(OverflowError()), reason(RecursionError())
    ('decode_error', 'invalid_value', 'too_large')
    """
    explicit = getattr(error, "reason", None)
    if isinstance(explicit, str):
        return explicit
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
        return "decode_error"
    if isinstance(error, RecursionError):
        return "too_large"  # nested deeper than the decoders go
    return "invalid_value"


def describe(error: BaseException) -> str:
    """A short, one-line description of ``error`` for a dead letter's ``detail``."""
    first = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first}"[:300]
