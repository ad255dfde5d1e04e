"""The receiver stage (``observer collect``): OTLP over HTTP and gRPC into Kafka.

- :mod:`~observer.collectors.receiver.otlp_http`, :mod:`~observer.collectors.receiver.otlp_grpc`:
  the two transports; :mod:`~observer.collectors.receiver.otlp_json` decodes OTLP/JSON and
  :mod:`~observer.collectors.receiver.inflate` reads bodies under a size cap.
- :mod:`~observer.collectors.receiver.intake`: what both transports share (tokens, the
  in-flight :mod:`~observer.collectors.receiver.budget`, the write to Kafka, the
  :mod:`~observer.collectors.receiver.spool` for when Kafka is away).
- :mod:`~observer.collectors.receiver.signals` and :mod:`~observer.collectors.receiver.trace_split`:
  how each signal is split into Kafka messages (whole traces per partition; the C pass
  ``_trace_split``, else pure Python).
"""
