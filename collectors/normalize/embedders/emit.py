"""The normaliser's ``observer.embeddings`` records, one batch at a time.

:class:`EmbeddingEmitter` is fed each message's export request and records (:meth:`add`),
then :meth:`flush` embeds the prompt and response texts of every LLM call of the batch in one
embedder call (at most ``batch_size`` texts a call) and returns one
:class:`~observer.core.records.EmbeddingRecord` per call, keyed by segment like the
``observer.llm`` records. Vectors sent in traces (:mod:`.trace_vectors`) are passed on as sent,
one record per vector; a span that sent vectors is not embedded again. Snippets of the prompt
and response (redacted, cut) are kept only under ``normalizer.content.capture``.
"""

from __future__ import annotations

import binascii
import json
import json.encoder
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from observer.collectors.common.cluster import resource_cluster
from observer.collectors.common.otlp_attributes import attribute_values, resource_names
from observer.collectors.common.otlp_messages import span_identity_problem
from observer.collectors.normalize import message_content
from observer.collectors.normalize.config import EmbeddingsConfig
from observer.collectors.normalize.embedders import trace_vectors
from observer.collectors.normalize.embedders.protocol import Embedder
from observer.collectors.normalize.message_content import ContentCapture
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import Counter

from observer.core import validate
from observer.core.bus import Output
from observer.core.records import EmbeddingRecord, LLMCall, Record, encode, segment_key
from observer.core.vectors import FLOAT32

EMBEDDINGS = Counter(
    "observer_normalizer_embeddings_total",
    "Embedding records the normaliser wrote, by source (content: embedded from message "
    "content; trace: vectors sent in traces).",
    ["source"],
)
STAGE = "normalizer"


def build_embedder(cfg: EmbeddingsConfig) -> Embedder:
    """The configured embedder; a fastembed model that does not load fails here, at start.

    >>> build_embedder(EmbeddingsConfig()).id
    'hashing-ngram-v1/256'
    """
    if cfg.embedder == "fastembed":
        from observer.collectors.normalize.embedders.fastembed_local import FastembedEmbedder

        return FastembedEmbedder(cfg.model_path, cfg.model_name, max_chars=cfg.max_chars)
    from observer.collectors.normalize.embedders.hashing import HashingEmbedder

    return HashingEmbedder(cfg.dimension, cfg.seed, max_chars=cfg.max_chars)


@dataclass
class _Call:
    """One LLM call waiting for its vectors."""

    record: LLMCall
    prompt: str | None
    response: str | None


def _content(span: Span) -> tuple[dict[str, Any], list[message_content.Event]]:
    """The span's content attributes and the older GenAI content events."""
    wanted = frozenset(kv.key for kv in span.attributes
                       if kv.key.startswith(message_content.CONTENT_PREFIXES))
    attributes = attribute_values(span.attributes, wanted) if wanted else {}
    events = [(e.name, attribute_values(e.attributes, frozenset(kv.key for kv in e.attributes)))
              for e in span.events if e.name in message_content.EVENTS]
    return attributes, events


def _bounded(attributes: Sequence[KeyValue], wanted: Callable[[str], bool],
             max_dimension: int) -> dict[str, Any]:
    """The wanted attributes' values; an array longer than ``max_dimension`` is not even
    converted (a million-element vector costs nothing but its count)."""
    return {
        kv.key: trace_vectors.Oversized()
        if len(kv.value.array_value.values) > max_dimension
        else attribute_values([kv], frozenset({kv.key}))[kv.key]
        for kv in attributes if wanted(kv.key)
    }


def _sent_vectors(span: Span, model: str, max_dimension: int) -> trace_vectors.TraceVectors | None:
    attributes = _bounded(span.attributes,
                          lambda key: key.startswith(trace_vectors.ATTRIBUTE_PREFIXES),
                          max_dimension)
    events = [(e.name, _bounded(e.attributes,
                                lambda key: key == trace_vectors.OPENLLMETRY_VECTOR,
                                max_dimension))
              for e in span.events if e.name == trace_vectors.OPENLLMETRY_EVENT]
    if not attributes and not events:
        return None
    return trace_vectors.from_span(attributes, events, model, max_dimension)


def _span_ids(call: LLMCall) -> tuple[bytes, bytes] | None:
    """The (trace id, span id) bytes whose ``hex()`` are the call's ids (None: no span's).

    >>> _span_ids(LLMCall(service="s", model="m", trace_id="0a", span_id="0b"))
    (b'\\n', b'\\x0b')
    >>> _span_ids(LLMCall(service="s", model="m", trace_id="0A", span_id="zz")) is None
    True
    """
    try:
        ids = bytes.fromhex(call.trace_id), bytes.fromhex(call.span_id)
    except ValueError:
        return None
    return ids if (ids[0].hex(), ids[1].hex()) == (call.trace_id, call.span_id) else None


class EmbeddingEmitter:
    """Collects one normaliser batch's calls (:meth:`add`), then embeds them (:meth:`flush`)."""

    def __init__(self, cfg: EmbeddingsConfig, topic: str, segment_keys: Sequence[str],
                 capture: ContentCapture | None = None, embedder: Embedder | None = None) -> None:
        self.cfg = cfg
        self.topic = topic
        self.segment_keys = list(segment_keys)
        self.capture = capture
        self.embedder = embedder or build_embedder(cfg)
        self._calls: list[_Call] = []
        self._ready: list[EmbeddingRecord] = []

    def clear(self) -> None:
        """Forget what was added since the last :meth:`flush` (a batch given up on)."""
        self._calls, self._ready = [], []

    def add(self, request: ExportTraceServiceRequest, records: Sequence[Record],
            texts: Mapping[tuple[bytes, bytes], Mapping[str, str]] | None = None) -> None:
        """Note the LLM calls of one request (``records``, its normalised records) and the
        vectors its spans sent. ``texts``: each LLM span's content by (trace id, span id) as
        the normaliser read it; without it the content is read here."""
        # By the spans' own id bytes: conversions per call, not two hex() per span.
        calls = {ids: r for r in records if isinstance(r, LLMCall)
                 and (ids := _span_ids(r)) is not None}
        for resource_spans in request.resource_spans:
            names: tuple[str, str, str] | None = None
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    ids = (span.trace_id, span.span_id)
                    call = calls.get(ids)
                    if call is None and not self.cfg.trace_vectors:
                        continue  # other spans matter only for the vectors they sent
                    # Vectors come on embedding spans (an LLM call of operation embeddings) and
                    # in events; a chat span's attributes are not scanned for them.
                    scan = call is None or call.operation == "embeddings" or len(span.events)
                    if self.cfg.trace_vectors and scan:
                        sent = _sent_vectors(span, call.model if call else "",
                                             self.cfg.max_trace_dimension)
                        if sent is not None and not span_identity_problem(span):
                            if call is None and names is None:
                                names = (*resource_names(resource_spans.resource, STAGE),
                                         resource_cluster(resource_spans.resource, STAGE))
                            self._ready += self._sent(span, call, names, sent)
                            continue
                    if call is not None:
                        found = (texts.get(ids) if texts is not None
                                 else message_content.texts(*_content(span)))
                        if found:
                            self._calls.append(
                                _Call(call, found.get("input"), found.get("output")))

    def _sent(self, span: Span, call: LLMCall | None, names: tuple[str, str, str] | None,
              sent: trace_vectors.TraceVectors) -> list[EmbeddingRecord]:
        if call is not None:
            common = self._common(call)
        else:
            service, tenant, cluster = names or ("unknown", "", "")
            common = {"service": service, "tenant": tenant, "cluster": cluster, "model": "",
                      "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                      "start_time_unix_nano": validate.count(
                          span.start_time_unix_nano, max=validate.MAX_UNIX_NANO) or 0}
        return [
            EmbeddingRecord(**common, embedder=sent.embedder, dimension=len(vector),
                            source="trace", prompt_embedding=vector.tolist(),
                            prompt_snippet=self._snippet(text or None))
            for vector, text in zip(sent.vectors, sent.texts, strict=True)
        ]

    @staticmethod
    def _common(call: LLMCall) -> dict[str, Any]:
        return {"service": call.service, "tenant": call.tenant, "cluster": call.cluster,
                "model": call.model,
                "prompt_version": call.prompt_version, "trace_id": call.trace_id,
                "span_id": call.span_id, "start_time_unix_nano": call.start_time_unix_nano}

    def _snippet(self, text: str | None) -> str | None:
        if self.capture is None or not text or not self.cfg.snippet_chars:
            return None
        # Redacted whole, then cut: a cut first could split a secret past the patterns.
        return validate.text(self.capture.redact(text), max_chars=self.cfg.snippet_chars,
                             newlines=True)

    def flush(self) -> list[Output]:
        """The batch's records: all calls embedded in as few embedder calls as allowed."""
        calls, self._calls = self._calls, []
        ready, self._ready = self._ready, []
        outputs = [Output(self.topic, segment_key(r.segment_of(self.segment_keys)), encode(r))
                   for r in ready]
        EMBEDDINGS.labels("trace").inc(len(ready))
        texts = [t for c in calls for t in (c.prompt, c.response) if t]
        if not texts:
            return outputs
        size = self.cfg.batch_size
        vectors = np.concatenate([self.embedder.embed(texts[i:i + size])
                                  for i in range(0, len(texts), size)])
        if not np.isfinite(vectors).all():  # a custom embedder's fault, not the client's
            raise ValueError(f"embedder {self.embedder.id} gave non-finite values")
        rows = iter(vectors.astype(FLOAT32, copy=False))  # little-endian, as base64 holds them
        # The same for every call of the batch, in the record's field order (_TEMPLATE's).
        constant = {**_TEMPLATE, "embedder": self.embedder.id,
                    "dimension": self.embedder.dimension, "source": "content"}
        for c in calls:
            prompt = _json_vector(next(rows)) if c.prompt else b"null"
            response = _json_vector(next(rows)) if c.response else b"null"
            # Written straight to JSON, not through the model: every field comes from a
            # validated LLMCall, the vectors were checked above, the snippets by validate.text
            # (tests/test_embedders.py checks the bytes decode to the same record). The
            # vectors are spliced in: base64 needs no escaping, and scanning it costs.
            values = {**constant, **self._common(c.record),
                      "prompt_snippet": self._snippet(c.prompt),
                      "response_snippet": self._snippet(c.response)}
            key = segment_key({k: str(values.get(k, "") or "") for k in self.segment_keys})
            head = _json_object(values)
            outputs.append(Output(self.topic, key, b"".join((
                head[:-1].encode(), b',"prompt_embedding":', prompt,
                b',"response_embedding":', response, b"}"))))
        EMBEDDINGS.labels("content").inc(len(calls))
        return outputs


def _json_vector(row: np.ndarray) -> bytes:
    """A little-endian float32 row as a JSON string of its base64 (``observer.core.vectors.to_base64``)."""
    return b'"' + binascii.b2a_base64(row, newline=False) + b'"'


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _c_encoder() -> Callable[[Any, int], list[str]] | None:
    """The C encoder json.dumps builds on every call, built once (no circular check: the
    values are a flat dict of strings, numbers and None); None where it is missing."""
    try:
        return json.encoder.c_make_encoder(  # type: ignore[no-any-return]
            None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
            False, False, True)
    except TypeError:  # None (CPython without _json), or another signature
        return None


_C_ENCODER = _c_encoder()


def _json_object(values: dict[str, Any]) -> str:
    """``json.dumps(values, ensure_ascii=False, separators=(",", ":"))``, cheaper.

    >>> _json_object({"a": "ü\\n", "b": None, "c": 2})
    '{"a":"ü\\\\n","b":null,"c":2}'
    """
    if _C_ENCODER is None:
        return _ENCODER.encode(values)
    return "".join(_C_ENCODER(values, 0))


# The JSON of an EmbeddingRecord but its vectors, field by field, with the defaults.
_TEMPLATE: dict[str, Any] = {
    (info.alias or name): (None if info.is_required() else info.get_default(call_default_factory=True))
    for name, info in EmbeddingRecord.model_fields.items()
    if name not in ("prompt_embedding", "response_embedding")
}
