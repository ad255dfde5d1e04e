"""A stage's checkpoint on a compacted topic, read back as its latest value per key.

The drift engine (``observer.drift-state``) and the eval join (``observer.eval-join-state``)
write their checkpoints as ordinary :class:`~observer.core.bus.Output` records with the batch
that made them (a tombstone, value ``None``, deletes a key), and read them back at a start
through a :class:`CompactedStore`:

- :class:`KafkaCompactedStore` reads the topic from its beginning to the high watermark its
  fetches carry (:func:`observer.core.bus.read_to_end`, never ``end_offsets``);
- :class:`MemoryCompactedStore` keeps the same records in a dict, fed with :meth:`apply`, for
  offline runs and tests.

>>> store = MemoryCompactedStore("observer.drift-state")
>>> store.apply([Output("observer.drift-state", "k", b"v"), Output("other", "x", b"y"),
...              Output("observer.drift-state", b"gone", b"1"),
...              Output("observer.drift-state", "gone", None)])
>>> store.load()
{'k': b'v'}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from observer.core.bus import Output, read_topic
from observer.core.config import KafkaConfig


class CompactedStore(Protocol):
    """Where a checkpoint is read back from; it is written as :class:`Output` records."""

    def load(self) -> dict[str, bytes]:
        """The latest value of every key not deleted, everything acknowledged so far."""
        ...


def key_text(key: bytes | str | None) -> str:
    """An output's or a record's key as the text a store indexes it by."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


class MemoryCompactedStore:
    """The topic's latest values in a dict: feed it a stage's outputs with :meth:`apply`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._values: dict[str, bytes | None] = {}

    def apply(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            if o.topic == self.topic:
                self._values[key_text(o.key)] = o.value

    def load(self) -> dict[str, bytes]:
        return {k: v for k, v in self._values.items() if v is not None}


class KafkaCompactedStore:
    """Reads the topic from its beginning to its end at the call.

    Parameters
    ----------
    cfg
        Kafka connection settings.
    topic
        The compacted checkpoint topic.
    timeout_s
        Longest time one :meth:`load` may take before it raises :class:`TimeoutError`.
    what
        What the topic holds, for that error ("the drift engine's checkpoints").
    """

    def __init__(self, cfg: KafkaConfig, topic: str, timeout_s: float = 60.0,
                 what: str = "checkpoints") -> None:
        self.cfg = cfg
        self.topic = topic
        self.timeout_s = timeout_s
        self.what = what

    def load(self) -> dict[str, bytes]:
        try:
            records = read_topic(self.cfg, self.topic, self.timeout_s)
        except TimeoutError:
            raise TimeoutError(f"reading {self.what} from {self.topic} took more than "
                               f"{self.timeout_s:g} s") from None
        values: dict[str, bytes | None] = {}
        for r in records:
            if r.key is not None:
                values[key_text(r.key)] = r.value
        return {k: v for k, v in values.items() if v is not None}
