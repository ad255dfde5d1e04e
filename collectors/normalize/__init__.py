"""The normaliser stage (``observer normalize``): ``otlp_spans`` -> ``observer.llm`` / ``observer.tools``.

:mod:`~observer.collectors.normalize.normalizer` is the stage;
:mod:`~observer.collectors.normalize.message_content` measures (and, opted in, captures) message
content.
"""
