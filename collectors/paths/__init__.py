"""The agent-path stage: whole traces from ``otlp_spans`` grouped into ``observer.paths`` records
(:mod:`~observer.collectors.paths.trace_grouping`)."""
