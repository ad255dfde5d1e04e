"""The one path every GPU sample takes, live or replayed: price it, mark idle time as waste,
write it out, and keep the latest figures for ``/metrics``.

>>> from observer.collectors.gpu.config import GPUConfig
>>> from observer.core.records import GPUSample
>>> sink = ListSink()
>>> p = GPUPipeline(GPUConfig(prices={"H100": {"on-demand": 3.6}}), sink)
>>> s = GPUSample(source="replay", node="n", gpu_uuid="g", gpu_model="NVIDIA H100 80GB HBM3",
...               time_unix_nano=0, utilization_pct=0.0)
>>> p.process([s, s.model_copy(update={"time_unix_nano": 10_000_000_000})])
>>> sink.records[0].cost_per_s, sink.records[0].idle, p.metrics.idle_dollars
(0.001, True, {'n/g': 0.01})
"""

from __future__ import annotations

import json
import logging
from typing import IO, Protocol

from observer.collectors.gpu.metrics import GPUMetrics
from observer.collectors.gpu.prices import UNPARTITIONED, PriceTable
from observer.core.bus import Output, make_producer, produce_all
from observer.collectors.gpu.config import GPUConfig
from observer.core.config import KafkaConfig
from observer.core.records import GPUEconomics, GPUSample, Record, ServingSample, encode

log = logging.getLogger(__name__)


def record_key(record: Record) -> str:
    """Kafka key on ``observer.gpu``: node/gpu[/mig] for samples, the model for serving
    figures, scope/name for economics.

    >>> record_key(GPUSample(source="nvml", node="n1", gpu_uuid="GPU-1", mig_instance="3",
    ...                      time_unix_nano=0))
    'n1/GPU-1/3'
    """
    if isinstance(record, GPUSample):
        return "/".join(p for p in (record.node, record.gpu_uuid, record.mig_instance) if p)
    if isinstance(record, ServingSample):
        return record.model
    if isinstance(record, GPUEconomics):
        return f"{record.scope}/{record.name}"
    raise TypeError(f"not a GPU record: {type(record).__name__}")


class Sink(Protocol):
    """Where records go."""

    def write(self, records: list[Record]) -> None: ...

    def close(self) -> None: ...


class ListSink:
    """Keeps records in memory (tests, replay summaries)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: list[Record]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


class JsonLinesSink:
    """One JSON record per line on a text stream (``--stdout``)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, records: list[Record]) -> None:
        for r in records:
            self.stream.write(encode(r).decode() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class KafkaSink:
    """Produces to ``observer.gpu`` and waits for Kafka's acknowledgement of every batch."""

    def __init__(self, cfg: KafkaConfig, topic: str, ack_timeout_s: float = 30.0) -> None:
        self.topic = topic
        self.ack_timeout_s = ack_timeout_s
        self.producer = make_producer(cfg)

    def write(self, records: list[Record]) -> None:
        outputs = [Output(self.topic, record_key(r), encode(r)) for r in records]
        if outputs:
            produce_all(self.producer, outputs, self.ack_timeout_s)

    def close(self) -> None:
        self.producer.close(timeout=5)


class GPUPipeline:
    """Price samples, account idle time, write records and update the metrics."""

    def __init__(self, cfg: GPUConfig, sink: Sink, metrics: GPUMetrics | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.prices = PriceTable(cfg.prices)
        self.metrics = metrics or GPUMetrics()
        self._last_time: dict[str, int] = {}
        self._unpriced: set[tuple[str, str]] = set()

    def price(self, sample: GPUSample, tokens_seen: bool = False) -> GPUSample:
        """The sample with its capacity type, price, cost per second and idle flag filled in."""
        capacity = sample.capacity_type or self.cfg.capacity_type
        per_hour = self.prices.per_hour(sample.gpu_model, capacity, sample.fraction)
        if per_hour is None and (sample.gpu_model, capacity) not in self._unpriced:
            self._unpriced.add((sample.gpu_model, capacity))
            log.warning(
                "no price for GPU %r (%s) in gpu.prices: cost figures stay empty",
                sample.gpu_model,
                capacity,
            )
        util = sample.utilization_pct
        idle = not tokens_seen and (
            (util is not None and util < self.cfg.idle_utilization_pct)
            # MIG slices no instance holds can run nothing: always waste.
            or sample.mig_profile == UNPARTITIONED
        )
        return sample.model_copy(
            update={
                "capacity_type": capacity,
                "price_per_hour": per_hour,
                "cost_per_s": None if per_hour is None else per_hour / 3600.0,
                "idle": idle,
            }
        )

    def process(self, records: list[Record], *, replace: bool = False) -> None:
        """Stamp ``gpu.cluster`` on every record, price the GPU samples among ``records`` not
        priced yet, then write all of them.

        ``replace``: the records are a full refresh (the Prometheus side), so ``/metrics``
        forgets label sets that are no longer there.
        """
        out: list[Record] = []
        cluster = self.cfg.cluster
        for r in records:
            if cluster and getattr(r, "cluster", cluster) != cluster:
                # This collector's cluster (gpu.cluster) on everything it writes.
                r = r.model_copy(update={"cluster": cluster})
            if isinstance(r, GPUSample):
                r = r if r.capacity_type else self.price(r)
                self._account(r)
            out.append(r)
        self.sink.write(out)
        self.metrics.observe(out, replace=replace)

    def _account(self, s: GPUSample) -> None:
        # The interval since this GPU's previous sample is charged to the state seen now.
        key = record_key(s)
        prev = self._last_time.get(key)
        self._last_time[key] = s.time_unix_nano
        if prev is not None and s.idle and s.cost_per_s is not None and s.time_unix_nano > prev:
            self.metrics.add_idle_dollars(key, s, s.cost_per_s * (s.time_unix_nano - prev) / 1e9)

    def close(self) -> None:
        self.sink.close()


def dumps_summary(summary: dict) -> str:
    """The last line a run prints: one JSON object."""
    return json.dumps(summary, sort_keys=True)
