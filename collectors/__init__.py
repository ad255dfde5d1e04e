"""Collectors: OTLP receivers and the normaliser that turns spans into observer records.

- :mod:`collectors.otlp_http`: the OTLP/HTTP trace receiver (``POST /v1/traces``) writing raw
  OTLP to ``otlp_spans``, one message per trace.
- :mod:`collectors.otlp_json`: OTLP/JSON decoding and encoding (hex ids, integer enums).
- :mod:`collectors.inflate`: request bodies read under a size cap, gzip/deflate included.
- :mod:`collectors.trace_split`: id validation and the per-trace split of an export request.
- :mod:`collectors.genai_mapping`: the semantic-convention table (GenAI, OpenInference,
  OpenLLMetry, vLLM) as data.
- :mod:`collectors.normalizer`: the consuming stage ``otlp_spans`` -> ``observer.llm`` /
  ``observer.tools``.
"""
