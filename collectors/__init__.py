"""Collectors: OTLP receivers and the normaliser that turns spans into observer records.

- :mod:`observer.collectors.otlp_http`: the OTLP/HTTP trace receiver (``POST /v1/traces``) writing raw
  OTLP to ``otlp_spans``, whole traces packed per partition.
- :mod:`observer.collectors.otlp_json`: OTLP/JSON decoding and encoding (hex ids, integer enums).
- :mod:`observer.collectors.inflate`: request bodies read under a size cap, gzip/deflate included.
- :mod:`observer.collectors.trace_split`: id validation and the per-trace, per-partition split of a request.
- :mod:`observer.collectors.genai_mapping`: the semantic-convention table (GenAI, OpenInference,
  OpenLLMetry, vLLM) as data.
- :mod:`observer.collectors.normalizer`: the consuming stage ``otlp_spans`` -> ``observer.llm`` /
  ``observer.tools``.
- :mod:`observer.collectors.message_content`: message counts, lengths and hashes; opt-in capture with
  redaction and a size cap.
- :mod:`observer.collectors.genai_metrics`: the consuming stage ``otlp_metrics`` (``gen_ai.*``) ->
  ``observer.genai-metrics`` as interval deltas.
- :mod:`observer.collectors.kserve_intake`, :mod:`observer.collectors.cloud_events`,
  :mod:`observer.collectors.inference_protocol`, :mod:`observer.collectors.kserve_pairing`: KServe's inference
  logger CloudEvents -> ``observer.kserve-events`` -> paired ``observer.predictions``.
"""
