"""Collectors: the stages that turn OpenTelemetry and KServe traffic into observer records.

One sub-package per stage; stages meet only at Kafka topics and :mod:`observer.core.records`,
and share what they must through :mod:`observer.collectors.common`.

- :mod:`observer.collectors.receiver`: OTLP/HTTP and OTLP/gRPC receivers writing raw OTLP to
  ``otlp_spans`` / ``otlp_metrics`` / ``otlp_logs``, whole traces packed per partition.
- :mod:`observer.collectors.normalize`: ``otlp_spans`` -> ``observer.llm`` / ``observer.tools``.
- :mod:`observer.collectors.paths`: ``otlp_spans`` -> ``observer.paths`` (agent paths per trace).
- :mod:`observer.collectors.kserve`: KServe's inference logger CloudEvents ->
  ``observer.kserve-events`` -> paired ``observer.predictions``.
- :mod:`observer.collectors.metrics`: ``otlp_metrics`` (``gen_ai.*``) -> ``observer.genai-metrics``,
  and the domain metric series.
- :mod:`observer.collectors.gpu`: GPU and serving metrics, and GPU economics (``observer.gpu``).
- :mod:`observer.collectors.common`: tenancy, sealing, OTLP message and attribute reading, and
  the semantic-convention table.
"""
