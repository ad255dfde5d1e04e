"""The cluster a span came from: named by the receivers, carried onto every record.

Rules (:class:`ClusterStamp`, applied by the receivers to every resource of every request):

=================================  ==================================================
the collector                      the cluster stamped as ``observer.cluster``
=================================  ==================================================
``receiver.cluster_pinned: true``  ``receiver.cluster``, whatever the client sent
otherwise                          the resource's ``k8s.cluster.name``, else its
                                   ``k8s.cluster.uid``, else ``receiver.cluster``
=================================  ==================================================

A client value must be a cluster name (:func:`cluster_name`: the characters of a DNS
subdomain, plus ``_`` as EKS allows; case-folded; at most :data:`MAX_CLUSTER_CHARS`): one that
is not is replaced by ``receiver.cluster`` and counted in
``observer_invalid_values_total{stage="receiver", field="cluster"}``, never refused. A client
cannot send ``observer.cluster`` itself: the receiver always overwrites it (with "" when no
cluster is known), like the tenant (:mod:`observer.collectors.common.tenancy`).

The stages (:func:`resource_cluster`) read ``observer.cluster``; a resource without it (an
OpenTelemetry Collector writing to Kafka directly, no receiver in between) is read by the same
``k8s.cluster.*`` rules. Like the tenant, the cluster is believed only where the tenant is:
on a message a receiver sealed when a stamp key is in use (:func:`forget` clears it on
the others, so they carry cluster ``""``).

>>> stamp = ClusterStamp("edge-1")
>>> r = Resource(attributes=[KeyValue(key="k8s.cluster.name", value=AnyValue(string_value="East"))])
>>> stamp.cluster_of(r), ClusterStamp("edge-1", pinned=True).cluster_of(r)
('east', 'edge-1')
>>> stamp.cluster_of(Resource()), cluster_name("bad name!"), cluster_name("eu-west.prod_1")
('edge-1', None, 'eu-west.prod_1')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: F401 (doctests)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from observer.core import validate

CLUSTER_ATTRIBUTE = "observer.cluster"
"""The resource attribute a receiver stamps (the stages read it first)."""
SOURCES = ("k8s.cluster.name", "k8s.cluster.uid")
"""The OpenTelemetry resource attributes a cluster is read from, in order."""
CLUSTER_EXTENSION = "observercluster"
"""The CloudEvents extension the KServe intake stamps (extension names are lowercase alnum)."""
ALL_ATTRIBUTES = frozenset({CLUSTER_ATTRIBUTE, *SOURCES})
MAX_CLUSTER_CHARS = 253
"""A DNS subdomain's length, and the records' ``cluster`` field's."""

# Labels of letters, digits, '-' and '_', each starting and ending with a letter or digit,
# joined by dots; each label at most 63 characters (DNS's rule).
_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?)*")


def cluster_name(value: Any) -> str | None:
    """``value`` as a cluster name (lowercased), or None when it is not one.

    >>> cluster_name("Prod-EU"), cluster_name("-x"), cluster_name("a" * 64), cluster_name(7)
    ('prod-eu', None, None, None)
    >>> cluster_name("3f2c0a1e-7d1b-4c2e-9a55-0b6c1d2e3f40")  # a k8s.cluster.uid
    '3f2c0a1e-7d1b-4c2e-9a55-0b6c1d2e3f40'
    """
    # ASCII first: some non-ASCII letters lowercase to ASCII ones (KELVIN SIGN to "k").
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLUSTER_CHARS \
            or not value.isascii():
        return None
    lowered = value.lower()
    return lowered if _NAME.fullmatch(lowered) else None


def _strings(resource: Resource) -> dict[str, Any]:
    """The resource's cluster attributes: a string's value, else None (not a name)."""
    found: dict[str, Any] = {}
    for kv in resource.attributes:
        if kv.key in ALL_ATTRIBUTES:
            is_string = kv.value.WhichOneof("value") == "string_value"
            found[kv.key] = kv.value.string_value if is_string else None
    return found


def _from_sources(values: dict[str, Any], stage: str) -> str | None:
    """The first ``k8s.cluster.*`` value sent; "" when it is not a name (counted); None when
    none was sent."""
    for attribute in SOURCES:
        if attribute in values:
            name = cluster_name(values[attribute])
            if name is None:
                validate.invalid(stage, "cluster")
            return name or ""
    return None


class ClusterStamp:
    """The receivers' rule (see the module docstring) for one collector's configuration.

    ``default``: ``receiver.cluster`` (checked by the configuration: "" or a name);
    ``pinned``: every resource gets ``default``.
    """

    def __init__(self, default: str = "", pinned: bool = False, stage: str = "receiver") -> None:
        checked = cluster_name(default) if default else ""
        if checked is None:
            raise ValueError(f"receiver.cluster {default!r} is not a cluster name (letters, "
                             "digits, '-', '_' and '.', like a DNS name)")
        if pinned and not checked:
            raise ValueError("receiver.cluster_pinned needs receiver.cluster")
        self.default, self.pinned, self.stage = checked, pinned, stage

    def cluster_of(self, resource: Resource) -> str:
        """The cluster stamped on ``resource``."""
        if self.pinned:
            return self.default
        return _from_sources(_strings(resource), self.stage) or self.default

    def stamp(self, resources: Iterable[Resource]) -> None:
        """Set ``observer.cluster`` on each resource (always, "" too: a stage then does not
        read the client's ``k8s.cluster.*`` again).

        >>> r = Resource(attributes=[KeyValue(key=CLUSTER_ATTRIBUTE,
        ...                                   value=AnyValue(string_value="spoofed"))])
        >>> ClusterStamp().stamp([r]); [(a.key, a.value.string_value) for a in r.attributes]
        [('observer.cluster', '')]
        """
        for resource in resources:
            cluster = self.cluster_of(resource)
            _remove(resource, frozenset({CLUSTER_ATTRIBUTE}))
            resource.attributes.add(key=CLUSTER_ATTRIBUTE, value=AnyValue(string_value=cluster))


def _remove(resource: Resource, names: frozenset[str]) -> None:
    kept = [kv for kv in resource.attributes if kv.key not in names]
    if len(kept) != len(resource.attributes):
        del resource.attributes[:]
        resource.attributes.extend(kept)


def forget(resources: Iterable[Resource]) -> None:
    """Drop every cluster attribute (a message whose tenant is not believed: its cluster is
    not either, so its records carry ``""``).

    >>> r = Resource(attributes=[KeyValue(key="k8s.cluster.uid", value=AnyValue(string_value="u"))])
    >>> forget([r]); len(r.attributes)
    0
    """
    for resource in resources:
        _remove(resource, ALL_ATTRIBUTES)


def resource_cluster(resource: Resource, stage: str) -> str:
    """The cluster of a resource as the stages read it: ``observer.cluster`` when a receiver
    stamped it, else the ``k8s.cluster.*`` rules; "" when none (invalid values counted).

    >>> r = Resource(attributes=[KeyValue(key="k8s.cluster.uid", value=AnyValue(string_value="U1"))])
    >>> resource_cluster(r, "doc"), resource_cluster(Resource(), "doc")
    ('u1', '')
    """
    values = _strings(resource)
    if CLUSTER_ATTRIBUTE in values:
        stamped = values[CLUSTER_ATTRIBUTE]
        if stamped == "":
            return ""
        name = cluster_name(stamped)
        if name is None:
            validate.invalid(stage, "cluster")
        return name or ""
    return _from_sources(values, stage) or ""


def event_cluster(value: Any, stage: str) -> str:
    """The cluster of a KServe event's ``observercluster`` extension ("" when absent or
    not a name, counted).

    >>> event_cluster("Edge-1", "doc"), event_cluster(None, "doc")
    ('edge-1', '')
    """
    if value is None or value == "":
        return ""
    name = cluster_name(value)
    if name is None:
        validate.invalid(stage, "cluster")
    return name or ""

