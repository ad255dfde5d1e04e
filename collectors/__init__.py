"""Collectors: OTLP receivers and the normaliser that turns spans into observer records.

- :mod:`collectors.otlp_http`: the OTLP/HTTP trace receiver (``POST /v1/traces``) writing raw
  OTLP to ``otlp_spans``, whole traces packed per partition.
- :mod:`collectors.otlp_json`: OTLP/JSON decoding and encoding (hex ids, integer enums).
- :mod:`collectors.inflate`: request bodies read under a size cap, gzip/deflate included.
- :mod:`collectors.trace_split`: id validation and the per-trace, per-partition split of a request.
- :mod:`collectors.genai_mapping`: the semantic-convention table (GenAI, OpenInference,
  OpenLLMetry, vLLM) as data.
- :mod:`collectors.normalizer`: the consuming stage ``otlp_spans`` -> ``observer.llm`` /
  ``observer.tools``.
- :mod:`collectors.message_content`: message counts, lengths and hashes; opt-in capture with
  redaction and a size cap.
- :mod:`collectors.genai_metrics`: the consuming stage ``otlp_metrics`` (``gen_ai.*``) ->
  ``observer.genai-metrics`` as interval deltas.
- :mod:`collectors.kserve_intake`, :mod:`collectors.cloud_events`,
  :mod:`collectors.inference_protocol`, :mod:`collectors.kserve_pairing`: KServe's inference
  logger CloudEvents -> ``observer.kserve-events`` -> paired ``observer.predictions``.
"""
