"""What the join knows of LLM calls: their segment by span id, trace id and session id.

A :class:`Target` is the segment of one LLM call (tenant, service, model, cluster). The
:class:`TargetIndex` finds it by a :data:`JoinKey`, ``(kind, tenant, id)``: the tenant is part
of every key, so one tenant's score never takes another tenant's segment, whatever ids it
sends. A span id names one call; a trace or a session keeps the first call seen in it.

The index is bounded by count (``max_targets``) and by age (``ttl_ms`` after a key was first
seen, record time): keys leave oldest first, and :meth:`TargetIndex.add` and
:meth:`TargetIndex.expire` return what left, so the checkpoint deletes it too.

>>> index = TargetIndex(max_targets=2, ttl_ms=1000)
>>> shop = Target("", "shop", "gpt-4o", "", seen_ms=0)
>>> index.add(("span", "", "s1"), shop), index.add(("trace", "", "t1"), shop)
([], [])
>>> index.add(("span", "", "s2"), shop)  # over max_targets: the oldest leaves
[('span', '', 's1')]
>>> index.find([("span", "", "s1"), ("trace", "", "t1")]).service
'shop'
>>> index.expire(now_ms=1000), len(index)
([('trace', '', 't1'), ('span', '', 's2')], 0)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

JoinKey = tuple[str, str, str]
"""``(kind, tenant, id)``: kind ``span``, ``trace`` or ``session``."""


@dataclass(frozen=True)
class Target:
    """The segment fields an evaluation takes from its target, and when it was first seen."""

    tenant: str
    service: str
    model: str
    cluster: str
    seen_ms: int


def eval_keys(target: str, tenant: str, trace_id: str, span_id: str,
              session_id: str) -> list[JoinKey]:
    """Where an evaluation's target may be found, most precise first: a span target by its
    span, else its trace; a trace target by its trace; a session target by its session, else
    the trace that carried it. Empty ids give no key.

    >>> eval_keys("span", "acme", "", "ab" * 8, "")
    [('span', 'acme', 'abababababababab')]
    >>> eval_keys("session", "", "cd" * 16, "", "s-1")[0]
    ('session', '', 's-1')
    """
    order = {"span": (("span", span_id), ("trace", trace_id)),
             "trace": (("trace", trace_id),),
             "session": (("session", session_id), ("trace", trace_id))}[target]
    return [(kind, tenant, value) for kind, value in order if value]


def call_keys(tenant: str, trace_id: str, span_id: str, session_id: str) -> list[JoinKey]:
    """The keys one LLM call answers to: its span, its trace, its session (when known).

    >>> call_keys("", "t", "s", "")
    [('span', '', 's'), ('trace', '', 't')]
    """
    return [(kind, tenant, value) for kind, value in
            (("span", span_id), ("trace", trace_id), ("session", session_id)) if value]


class TargetIndex:
    """Join keys -> targets, oldest first, bounded by count and age (see the module)."""

    def __init__(self, max_targets: int, ttl_ms: int) -> None:
        self.max_targets = max_targets
        self.ttl_ms = ttl_ms
        self._keys: OrderedDict[JoinKey, Target] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: JoinKey) -> bool:
        return key in self._keys

    def add(self, key: JoinKey, target: Target) -> list[JoinKey]:
        """Hold ``key`` (a key held already keeps its first target); the keys dropped to stay
        within ``max_targets``, oldest first."""
        if key in self._keys:
            return []
        self._keys[key] = target
        dropped = []
        while len(self._keys) > self.max_targets:
            dropped.append(self._keys.popitem(last=False)[0])
        return dropped

    def find(self, keys: Iterable[JoinKey]) -> Target | None:
        """The target of the first of ``keys`` held, or ``None``."""
        for key in keys:
            found = self._keys.get(key)
            if found is not None:
                return found
        return None

    def expire(self, now_ms: int) -> list[JoinKey]:
        """Drop the keys first seen ``ttl_ms`` or more before ``now_ms``; returns them."""
        dropped = []
        # Keys are added in record-time order, so the oldest are in front.
        while self._keys:
            key, target = next(iter(self._keys.items()))
            if target.seen_ms + self.ttl_ms > now_ms:
                break
            del self._keys[key]
            dropped.append(key)
        return dropped
