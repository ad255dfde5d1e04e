"""KServe inference payloads (v1 and v2 / Open Inference Protocol) as feature columns.

A payload becomes columns: name -> one value per instance, which is what drift scores. The
protocol is recognised from the body's shape (one table, :data:`LAYOUTS`):

==================================================  ========  ===============================
body                                                protocol  rows
==================================================  ========  ===============================
``{"instances": [...]}``                            v1        one instance per item
``{"predictions": [...]}``                          v1        one prediction per item
``{"inputs"|"outputs": [{name, shape, data}, ...]}``  v2        tensors; ``shape[0]`` instances
``{"inputs"|"outputs": {...} or [...]}``            v1        TensorFlow's columnar format
==================================================  ========  ===============================

Column names: a scalar row is one column (``input`` / ``prediction`` in v1, the tensor's name
in v2); a list row gives ``<name>.0``, ``<name>.1`` ... (nested lists flattened row-major); a
dict row gives one column per key (``<key>.0`` ... for list values). Strings longer than
``max_string_chars`` are replaced by ``sha256:<16 hex>`` so free text never lands in a
record, while short categorical values stay usable for drift. At most ``max_features`` columns
and ``max_instances`` instances are kept (``truncated`` says when some were dropped).

Cells are values a record and a statistic can take (:mod:`observer.core.validate`): NaN,
infinities and integers outside int64 become missing values (``None``), strings are valid
UTF-8 without control characters, column names are capped. A body that is not JSON, nests
deeper than the decoder goes, or has numbers of more digits than Python parses is a
:class:`PayloadError`, never another exception.

>>> p = parse(b'{"instances": [[6.8, 2.8], [6.0, 3.4]]}', "request")
>>> p.protocol, p.instances, p.columns
('v1', 2, {'input.0': [6.8, 6.0], 'input.1': [2.8, 3.4]})
>>> p = parse(b'{"model_name": "iris", "model_version": "3", "outputs": [{"name": "label",'
...           b' "shape": [2], "datatype": "INT64", "data": [1, 2]}]}', "response")
>>> p.protocol, p.model, p.model_version, p.columns
('v2', 'iris', '3', {'label': [1, 2]})
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from observer.core import validate

Side = Literal["request", "response"]
Scalar = int | float | bool | str | None


class PayloadError(ValueError):
    """The body is not a KServe v1 or v2 inference payload; the text says why."""


@dataclass
class Payload:
    """One request's or response's features as columns."""

    protocol: Literal["v1", "v2"]
    instances: int
    columns: dict[str, list[Scalar]] = field(default_factory=dict)
    model: str = ""
    model_version: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class Limits:
    max_features: int = 64
    max_instances: int = 1000
    max_string_chars: int = 64


INT64 = 2**63


def _scalar(value: Any, limits: Limits) -> Scalar:
    """One cell as a record keeps it.

    >>> _scalar(float("nan"), Limits()), _scalar(10**30, Limits()), _scalar("a\\ud800", Limits())
    (None, None, 'a�')
    """
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
            return "sha256:" + digest[:16]
        return validate.text(value, max_chars=limits.max_string_chars, newlines=True)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf have no place in a JSON record
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return None  # no model feature is an integer past int64; a statistic cannot take it
    return value  # type: ignore[no-any-return]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _row_cells(row: Any, base: str) -> dict[str, Any]:
    """One row as ``{column: value}``."""
    if isinstance(row, dict):
        cells: dict[str, Any] = {}
        for key, value in row.items():
            cells.update(_row_cells(value, str(key)))
        return cells
    if isinstance(row, list):
        return {f"{base}.{j}": leaf for j, leaf in enumerate(_flatten(row))}
    return {base: row}


class _Columns:
    """Columns being built under the limits."""

    def __init__(self, instances: int, limits: Limits) -> None:
        self.limits = limits
        self.instances = min(instances, limits.max_instances)
        self.truncated = instances > limits.max_instances
        self.columns: dict[str, list[Scalar]] = {}

    def put(self, name: str, index: int, value: Any) -> None:
        if index >= self.instances:
            return
        name = validate.text(name)
        column = self.columns.get(name)
        if column is None:
            if len(self.columns) >= self.limits.max_features:
                self.truncated = True
                return
            column = self.columns[name] = [None] * self.instances
        column[index] = _scalar(value, self.limits)


def _rows(rows: Any, base: str, limits: Limits) -> tuple[int, dict[str, list[Scalar]], bool]:
    if not isinstance(rows, list):
        raise PayloadError(f"expected a list of {base} rows, got {type(rows).__name__}")
    out = _Columns(len(rows), limits)
    for i, row in enumerate(rows[: out.instances]):
        for name, value in _row_cells(row, base).items():
            out.put(name, i, value)
    return len(rows), out.columns, out.truncated


def _columnar(columns: Any, base: str, limits: Limits) -> tuple[int, dict[str, list[Scalar]], bool]:
    """TensorFlow's columnar v1 format: ``{"inputs": {name: [one per instance]}}``."""
    if isinstance(columns, list):
        return _rows(columns, base, limits)
    if not isinstance(columns, dict):
        return _rows([columns], base, limits)
    lengths = {len(v) if isinstance(v, list) else 1 for v in columns.values()}
    if len(lengths) > 1:
        raise PayloadError(f"columnar {base}s have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    out = _Columns(n, limits)
    for name, values in columns.items():
        for i, value in enumerate(values if isinstance(values, list) else [values]):
            for cell, leaf in _row_cells(value, str(name)).items():
                out.put(cell, i, leaf)
    return n, out.columns, out.truncated


def _is_tensor_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, dict) and "name" in t and "data" in t for t in value)
    )


def _tensors(tensors: list[dict[str, Any]], limits: Limits) -> tuple[int, dict[str, list[Scalar]], bool]:
    """v2 tensors: each ``{name, shape, datatype, data}``; ``shape[0]`` is the batch size."""
    counts: list[int] = []
    flat: list[tuple[str, list[Any], int]] = []
    for tensor in tensors:
        name = str(tensor["name"])
        data = _flatten(tensor["data"])
        shape = tensor.get("shape") or [len(data)]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= validate.MAX_COUNT
            for d in shape
        ):
            raise PayloadError(f"tensor {name!r}: shape must be a list of sizes, got {shape!r}")
        if math.prod(shape) != len(data):
            raise PayloadError(
                f"tensor {name!r}: shape {shape} holds {math.prod(shape)} values, "
                f"data has {len(data)}"
            )
        counts.append(shape[0] if shape else 1)
        flat.append((name, data, math.prod(shape[1:]) if len(shape) > 1 else 0))
    n = max(counts, default=0)
    out = _Columns(n, limits)
    for name, data, width in flat:
        if width == 0:  # one value per instance (shape [n] or a scalar)
            for i, value in enumerate(data):
                out.put(name, i, value)
        else:
            for i in range(min(len(data) // width, out.instances)):
                for j in range(width):
                    out.put(f"{name}.{j}", i, data[i * width + j])
    return n, out.columns, out.truncated


# key in the body -> (protocol, default column name, reader), first match wins; "inputs" and
# "outputs" are v2 when they hold tensors, else TensorFlow's columnar v1.
_TENSOR_KEYS = frozenset({"inputs", "outputs"})
Reader = Callable[[Any, str, Limits], tuple[int, dict[str, list[Scalar]], bool]]
LAYOUTS: dict[Side, list[tuple[str, Literal["v1", "v2"], str, Reader]]] = {
    "request": [
        ("instances", "v1", "input", _rows),
        ("inputs", "v2", "input", lambda v, b, lim: _tensors(v, lim)),
        ("inputs", "v1", "input", _columnar),
    ],
    "response": [
        ("predictions", "v1", "prediction", _rows),
        ("outputs", "v2", "output", lambda v, b, lim: _tensors(v, lim)),
        ("outputs", "v1", "prediction", _columnar),
    ],
}


def _name(value: Any) -> str:
    """A model name or version: a string or a number, capped; anything else is no name."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value) if validate.finite(value) is not None else ""
    return validate.text(value) if isinstance(value, str) else ""


def parse(body: bytes, side: Side, limits: Limits = Limits()) -> Payload:
    """The features of a request body or the outputs of a response body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # not JSON, bad UTF-8, huge numbers, too deep
        raise PayloadError(f"{side} body is not JSON: {validate.describe(e)}") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"{side} body must be a JSON object, got {type(doc).__name__}")
    for key, protocol, base, reader in LAYOUTS[side]:
        if key not in doc:
            continue
        if key in _TENSOR_KEYS and (protocol == "v2") != _is_tensor_list(doc[key]):
            continue
        try:
            instances, columns, truncated = reader(doc[key], base, limits)
        except RecursionError:
            raise PayloadError(f"{side} body nests too deep to read as columns") from None
        return Payload(
            protocol=protocol,
            instances=instances,
            columns=columns,
            model=_name(doc.get("model_name")),
            model_version=_name(doc.get("model_version")),
            truncated=truncated,
        )
    wanted = " or ".join(sorted({f'"{k}"' for k, *_ in LAYOUTS[side]}))
    raise PayloadError(f"{side} body has none of {wanted}: not a KServe v1/v2 payload")
