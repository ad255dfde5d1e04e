"""Quarantine: a record a stage cannot process goes to ``observer.dead-letter``, never stops it.

A dead letter keeps everything needed to look at the record later or replay it: the original
bytes (base64), where they came from (topic, partition, offset, key), the stage and a short
reason. It is counted in ``observer_dead_letters_total{stage,reason}``, and the stage commits
past the original like any processed message.

``reason`` is a small, fixed vocabulary (it is a metric label): ``invalid_value``,
``decode_error``, ``schema_error``, ``processing_error``, ``too_large``. The free-text
``detail`` says which field and why, capped at :data:`MAX_DETAIL_CHARS`.

>>> from observer.core.bus import Message
>>> m = Message("otlp_spans", 0, 7, b"k", b"\\xff", 0)
>>> out = dead_letter("t.dead-letter", "normalize", m, "decode_error", "not protobuf")
>>> out.topic, out.key
('t.dead-letter', 'normalize')
>>> import json; json.loads(out.value)["source"]["offset"]
7
"""

from __future__ import annotations

import base64
import json
import logging
import time

from prometheus_client import Counter

from observer.core.bus import Message, Output

log = logging.getLogger(__name__)

SCHEMA = "observer.dead-letter/v1"
MAX_DETAIL_CHARS = 500
MAX_ORIGINAL_BYTES = 1_000_000
"""Originals above this are cut (``truncated: true``): a dead letter must fit in a message."""

REASONS = ("invalid_value", "decode_error", "schema_error", "processing_error", "too_large")

DEAD_LETTERS = Counter(
    "observer_dead_letters_total",
    "Records a stage quarantined to the dead-letter topic instead of processing them.",
    ["stage", "reason"],
)


def dead_letter(
    topic: str, stage: str, message: Message, reason: str, detail: str = ""
) -> Output:
    """The :class:`Output` quarantining ``message``; counts it. Key: the stage's name."""
    if reason not in REASONS:
        reason = "processing_error"
    DEAD_LETTERS.labels(stage, reason).inc()
    original = message.value or b""
    value = {
        "schema": SCHEMA,
        "stage": stage,
        "reason": reason,
        "detail": detail[:MAX_DETAIL_CHARS],
        "source": {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "timestamp_ms": message.timestamp_ms,
            "key": base64.b64encode(message.key).decode() if message.key else None,
        },
        "original": base64.b64encode(original[:MAX_ORIGINAL_BYTES]).decode(),
        "original_bytes": len(original),
        "truncated": len(original) > MAX_ORIGINAL_BYTES,
        "quarantined_at_ms": int(time.time() * 1000),
    }
    log.warning(
        "stage %s quarantined %s[%d]@%d: %s %s",
        stage, message.topic, message.partition, message.offset, reason, detail[:200],
    )
    return Output(topic, stage, json.dumps(value, separators=(",", ":")).encode())
