"""Embedders: text to L2-normalised vectors behind one :class:`~.protocol.Embedder` protocol.

- :mod:`~.hashing`: the default; hashed word and character n-grams with a seeded signed
  projection (no weights, no fitting, the same vector in every process);
- :mod:`~.fastembed_local`: a local ONNX model through ``fastembed`` (the ``embeddings``
  extra), loaded from a configured path only;
- :mod:`~.trace_vectors`: vectors that arrive in traces (OpenInference embedding spans,
  OpenLLMetry ``db.query.embeddings.vector`` events), used as sent;
- :mod:`~.emit`: the normaliser's ``observer.embeddings`` records of one batch.
"""
