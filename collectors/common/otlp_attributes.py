"""OTLP attributes and resources read the same way by every consuming stage.

The normaliser, trace grouping and the GenAI metrics stage all take a resource's service and
tenant, and a span's or data point's attributes, from OTLP messages: one definition here keeps
them agreeing (and keeps those stages from importing one another).

>>> from opentelemetry.proto.resource.v1.resource_pb2 import Resource
>>> resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="shop"))])
>>> resource_names(resource, "doctest"), len(resource_key(resource))
(('shop', ''), 16)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from observer.collectors.common.tenancy import TENANT_ATTRIBUTE
from observer.core import validate

# The receiver stamps the tenant on the resource (collectors.common.tenancy).
RESOURCE_ATTRIBUTES = frozenset({"service.name", TENANT_ATTRIBUTE})


def attribute_values(attributes: Sequence[KeyValue], wanted: frozenset[str]) -> dict[str, Any]:
    """Python values of the ``wanted`` attributes; the rest (prompts...) are not even converted.

    >>> attribute_values([KeyValue(key="a", value=AnyValue(int_value=1)),
    ...                   KeyValue(key="b", value=AnyValue(string_value="x"))], frozenset("a"))
    {'a': 1}
    """
    # A loop, not a comprehension: each ``kv.key`` builds a new str in upb, read it once.
    found: dict[str, Any] = {}
    for kv in attributes:
        key = kv.key
        if key in wanted:
            found[key] = any_value(kv.value)
    return found


def any_value(value: AnyValue) -> Any:
    """The Python value of an ``AnyValue``: arrays as lists, key-value lists as dicts, unset
    as None.

    >>> any_value(AnyValue(string_value="x")), any_value(AnyValue()), any_value(AnyValue(int_value=3))
    ('x', None, 3)
    """
    kind = value.WhichOneof("value")
    if kind == "string_value":  # most attributes: no getattr by name
        return value.string_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None




def resource_names(resource: Any, stage: str) -> tuple[str, str]:
    """``(service, tenant)`` of a resource: valid names, ``unknown`` / ``""`` otherwise."""
    values = attribute_values(resource.attributes, RESOURCE_ATTRIBUTES)
    names = []
    for attribute, field, default in (
        ("service.name", "service", "unknown"),
        (TENANT_ATTRIBUTE, "tenant", ""),
    ):
        value = values.get(attribute)
        name = validate.text(value) if isinstance(value, str) else ""
        if attribute in values and not name:
            validate.invalid(stage, field)
        names.append(name or default)
    return names[0], names[1]


def resource_key(resource: Resource) -> str:
    """Kafka key of a resource: a short hash of its deterministic serialisation.

    >>> resource_key(Resource()) == resource_key(Resource())
    True
    """
    return hashlib.sha256(resource.SerializeToString(deterministic=True)).hexdigest()[:16]
