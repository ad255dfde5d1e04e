"""Golden OTLP/JSON payloads, one per convention (tests/golden/collectors/*.json), each with
the records it must produce. The payloads mirror what each instrumentation emits, content
attributes included; the expectations were written by hand from the conventions' documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from observer.collectors.receiver import otlp_json
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.bus import Message
from observer.collectors.paths.config import PathsConfig
from observer.core.config import KafkaConfig
from observer.core.records import decode
from observer.core.topics import Topics

GOLDEN = Path(__file__).parent / "golden" / "collectors"
CASES = sorted(GOLDEN.glob("*.json"))
TOPICS = Topics.from_config(KafkaConfig())
CONTENT = ("Where is my order", "refund my order", "track order 7", "calling refund")


def subset(record: Any, expected: dict[str, Any]) -> dict[str, Any]:
    dumped = record.model_dump(by_alias=True)
    return {k: dumped.get(k, "<missing>") for k in expected}


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_payload(case: Path) -> None:
    golden = json.loads(case.read_text())
    request = otlp_json.decode_trace_request(json.dumps(golden["request"]))
    message = Message(TOPICS.spans, 0, 0, None, request.SerializeToString(), 0)

    outputs = Normalizer(TOPICS).process([message])
    llm = [decode(o.value) for o in outputs if o.topic == TOPICS.llm]
    tools = [decode(o.value) for o in outputs if o.topic == TOPICS.tools]
    expected = golden["expected"]
    assert [subset(r, e) for r, e in zip(llm, expected["llm"])] == expected["llm"]
    assert len(llm) == len(expected["llm"])
    assert [subset(r, e) for r, e in zip(tools, expected["tools"])] == expected["tools"]
    assert len(tools) == len(expected["tools"])
    for output in outputs:  # content never leaves the normaliser by default
        assert not any(text.encode() in output.value for text in CONTENT)

    clock = FakeClock()
    grouper = TraceGrouper(TOPICS, PathsConfig(grace_s=0, timeout_s=60), clock=clock)
    grouper.process([message])
    clock.now = 60
    paths = [decode(o.value) for o in grouper.tick()]
    if expected["paths"] is not None:
        assert [subset(p, e) for p, e in zip(paths, expected["paths"])] == expected["paths"]
        assert len(paths) == len(expected["paths"])


def test_every_convention_has_a_golden_payload() -> None:
    conventions = {json.loads(c.read_text())["convention"].split(",")[0] for c in CASES}
    assert {"OpenTelemetry GenAI", "OpenInference", "OpenLLMetry (Traceloop)",
            "vLLM llm_request server span"} <= conventions
    assert {c.stem for c in CASES} >= {"genai_current", "genai_legacy"}
