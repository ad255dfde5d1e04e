"""Benchmarks and measurements of the drift engine; run them with ``python -m benchmarks.run``."""
