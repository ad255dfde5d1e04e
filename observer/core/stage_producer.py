"""The producer a consuming stage writes its outputs with: kafka-python or librdkafka.

A :class:`~observer.core.bus.StageRunner` sends a batch's outputs and waits for every
``acks=all`` acknowledgement before it commits the batch's input offsets; only *how* the
records are built and sent changes with ``kafka.stage_client``:

- ``librdkafka`` (default): :class:`~observer.core.producers.LibrdkafkaProducer`, the
  receivers' client. It builds and batches records in C: the normaliser writes one record
  per span, and with kafka-python ``send`` cost more CPU than normalising (about 170 us a
  record against about 2 us here, measured in one profile of the normaliser alone). Its
  batches hold many records: whoever reads a topic "to its end" on the embedded broker must
  go by the fetched high watermark (:func:`observer.core.bus.read_to_end`), not
  ``end_offsets``, which that broker answers with the last batch's base offset + 1;
- ``kafka-python``: :func:`observer.core.bus.produce_all`; it also takes the
  ``kafka.client_options`` librdkafka has no name for here.

The stage's consumer follows the same knob (:mod:`observer.core.stage_consumer`).

Both raise the same errors, kafka-python's, so :mod:`observer.core.faults` classifies them
once: a message over a size limit is ``MessageSizeTooLargeError`` (poison: its input is
quarantined as ``too_large``), a missing acknowledgement is ``KafkaTimeoutError``
(transient: the stage restarts from its committed offsets).

>>> from observer.core.config import KafkaConfig
>>> open_stage_producer(KafkaConfig(stage_client="librdkafka",
...                                 client_options={"api_version": (3, 0)}), 5)
Traceback (most recent call last):
...
observer.core.config.ConfigError: kafka.client_options: api_version has no librdkafka equivalent here; set kafka.stage_client: kafka-python to use it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from observer.core.bus import Output, make_producer, produce_all
from observer.core.config import KafkaConfig
from observer.core.producers import (
    LibrdkafkaProducer,
    MessageTooLarge,
    NotDurable,
    check_stage_client,
    wait_acknowledged,
)

STAGE_LINGER_MS = 1.0
"""How long librdkafka waits to fill a batch: a stage sends a whole batch's outputs at once,
so this only bounds the wait for a lone tick output."""


class StageProducer(Protocol):
    """What a :class:`~observer.core.bus.StageRunner` needs from a Kafka producer."""

    def send_all(self, outputs: Sequence[Output], timeout_s: float) -> None:
        """Produce ``outputs`` and return once every one is acknowledged by all in-sync
        replicas; kafka-python's ``MessageSizeTooLargeError`` or ``KafkaTimeoutError`` (or
        another ``KafkaError``) when not."""
        ...

    def close(self, timeout_s: float) -> None: ...


class KafkaPythonStageProducer:
    """:class:`StageProducer` on kafka-python (``kafka.stage_client: kafka-python``)."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self._producer = make_producer(cfg)

    def send_all(self, outputs: Sequence[Output], timeout_s: float) -> None:
        produce_all(self._producer, list(outputs), timeout_s)

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)


class LibrdkafkaStageProducer:
    """:class:`StageProducer` on librdkafka (``kafka.stage_client: librdkafka``)."""

    def __init__(self, cfg: KafkaConfig, timeout_s: float) -> None:
        self._producer = LibrdkafkaProducer(cfg, timeout_s, linger_ms=STAGE_LINGER_MS)

    def send_all(self, outputs: Sequence[Output], timeout_s: float) -> None:
        try:
            wait_acknowledged(self._producer.submit(outputs), timeout_s)
        except MessageTooLarge as e:
            raise MessageSizeTooLargeError(str(e)) from None
        except NotDurable as e:
            raise KafkaTimeoutError(str(e)) from None

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout_s)


def open_stage_producer(cfg: KafkaConfig, timeout_s: float) -> StageProducer:
    """The :class:`StageProducer` ``kafka.stage_client`` names; ``timeout_s`` bounds every
    wait for an acknowledgement (librdkafka expires a record not acknowledged by then).
    A ``kafka.client_options`` entry librdkafka cannot take is a :class:`ConfigError`."""
    check_stage_client(cfg)
    if cfg.stage_client == "kafka-python":
        return KafkaPythonStageProducer(cfg)
    return LibrdkafkaStageProducer(cfg, timeout_s)
