"""Read models the admin API serves, built by tailing ``observer.*`` topics.

The admin API never reaches into a stage: it reads what the stages published, so it works the
same in ``observer up`` and when every stage runs in its own process.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from kafka import TopicPartition

from observer.core.bus import make_consumer
from observer.core.compacted import key_text
from observer.core.config import KafkaConfig
from observer.core.records import Record, RecordError, decode

log = logging.getLogger(__name__)


class TopicView:
    """Tail ``topic`` from the beginning (no consumer group) and keep records in memory.

    ``key_of`` names the slot a record fills: the latest record per key is kept
    (``latest()``); every record also goes to a bounded history (``history()``). A tombstone
    (a Kafka record without a value, on a compacted topic) empties the slot its Kafka key
    names: on ``observer.references`` slots are the keys, and a retired stream's state goes.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        key_of: Callable[[Record], str],
        history_size: int = 1000,
    ) -> None:
        self.cfg = cfg
        self.topic = topic
        self.key_of = key_of
        self._latest: dict[str, Record] = {}
        self._history: deque[Record] = deque(maxlen=history_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"view-{topic}")
        self.count = 0

    def start(self) -> "TopicView":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        consumer = make_consumer(self.cfg, None)
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            consumer.seek_to_beginning()
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        if r.value is None:
                            if r.key is not None:
                                with self._lock:
                                    self._latest.pop(key_text(r.key), None)
                            continue
                        try:
                            record = decode(r.value)
                        except RecordError as e:
                            log.warning("skipping a bad record on %s: %s", self.topic, e)
                            continue
                        with self._lock:
                            self._latest[self.key_of(record)] = record
                            self._history.append(record)
                            self.count += 1
        except Exception:
            log.exception("view of %s stopped", self.topic)
        finally:
            consumer.close(autocommit=False)

    def latest(self) -> list[Record]:
        with self._lock:
            return list(self._latest.values())

    def history(self) -> list[Record]:
        """Most recent first."""
        with self._lock:
            return list(reversed(self._history))
