"""Metric stages: ``gen_ai.*`` OTLP metrics as interval deltas
(:mod:`~observer.collectors.metrics.genai_metrics`) and the domain series the metrics endpoint
exports (:mod:`~observer.collectors.metrics.domain_metrics`)."""
