"""A synthetic customer-support agent that emits OpenTelemetry GenAI spans.

Each conversation is one trace: ``invoke_agent`` -> ``chat`` (plans a tool call) ->
``execute_tool`` -> ``chat`` (answers). Span times are simulated (no sleeping), so thousands of
conversations take seconds. The answering ``chat`` span carries the user's question and the
answer as ``gen_ai.input.messages`` / ``gen_ai.output.messages``: real prose from the Python
Language Reference (:mod:`observer.demo.python_docs`), about a *subject*. Three behaviours:
:data:`BASELINE`; :data:`NEW_SUBJECT`, where users ask about another subject with the same
lengths and token counts (only the meaning changes); and :data:`DRIFTED`, where answers get
longer, some stop on ``length`` and tools fail more often.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> provider, spans = TracerProvider(), InMemorySpanExporter()
>>> provider.add_span_processor(SimpleSpanProcessor(spans))
>>> SupportAgent(provider.get_tracer("demo"), seed=1).converse(BASELINE)
4
>>> sorted(s.name for s in spans.get_finished_spans())[0]
'chat gpt-4o-mini'
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from functools import cache

import numpy as np

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from observer.demo import python_docs

TOOLS = ("lookup_order", "issue_refund", "search_faq", "update_address")
TOOL_WEIGHTS = (0.4, 0.15, 0.35, 0.1)


@dataclass(frozen=True)
class Behaviour:
    answer_tokens_mean: float
    length_stop_share: float
    tool_error_rate: float
    subject: str = "control"
    """What users ask about: ``control`` (statements and control flow) or ``data`` (numbers
    and data types), each text length-matched to the ``control`` text it replaces."""


BASELINE = Behaviour(answer_tokens_mean=180, length_stop_share=0.0, tool_error_rate=0.05)
NEW_SUBJECT = Behaviour(answer_tokens_mean=180, length_stop_share=0.0, tool_error_rate=0.05,
                        subject="data")
DRIFTED = Behaviour(answer_tokens_mean=420, length_stop_share=0.3, tool_error_rate=0.35)

WORDS_PER_TOKEN = 0.75
"""Answer words per output token (English prose)."""


@cache
def _prose(subject: str) -> list[str]:
    return python_docs.prose(python_docs.CONTROL if subject == "control" else python_docs.DATA)


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])

MS = 1_000_000  # nanoseconds per millisecond


class SupportAgent:
    """Emits one trace per :meth:`converse` call through ``tracer``."""

    def __init__(
        self,
        tracer: Tracer,
        seed: int = 7,
        model: str = "gpt-4o-mini",
        provider: str = "openai",
        name: str = "support-agent",
    ) -> None:
        self.tracer = tracer
        self.rng = random.Random(seed)
        # Texts come from their own generator, so the conversations' shapes (tokens, tools,
        # latencies) are the same as without content for the same seed.
        self.text_rng = np.random.default_rng(seed)
        self.model = model
        self.provider = provider
        self.name = name

    def _texts(self, answer_tokens: int, subject: str) -> tuple[str, str]:
        """A question and an answer; another subject's are length-matched to the control ones."""
        rng = self.text_rng
        control = _prose("control")
        question = python_docs.words_run(control, int(rng.integers(6, 41)), rng)
        answer = python_docs.words_run(control, max(5, min(400, int(answer_tokens * WORDS_PER_TOKEN))), rng)
        if subject != "control":
            words = _prose(subject)
            question = python_docs.length_matched(question, words, rng)
            answer = python_docs.length_matched(answer, words, rng)
        return question, answer

    def _chat(self, parent: trace.Span, start_ns: int, input_tokens: int, output_tokens: int,
              finish_reason: str, content: tuple[str, str] | None = None) -> int:
        latency_ms = 120 + 14 * output_tokens * self.rng.uniform(0.8, 1.2)
        span = self.tracer.start_span(
            f"chat {self.model}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model,
                "gen_ai.response.model": self.model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.response.finish_reasons": [finish_reason],
                # Prefill grows with the prompt; derived, not drawn, so the seeded
                # conversations stay the same.
                "gen_ai.response.time_to_first_chunk": round(0.08 + input_tokens * 0.00015, 4),
            },
        )
        if content is not None:
            span.set_attribute("gen_ai.input.messages", _messages("user", content[0]))
            span.set_attribute("gen_ai.output.messages", _messages("assistant", content[1]))
        end_ns = start_ns + int(latency_ms * MS)
        span.end(end_time=end_ns)
        return end_ns

    def converse(self, behaviour: Behaviour) -> int:
        """Run one conversation; returns the number of spans emitted."""
        rng = self.rng
        start_ns = time.time_ns()
        root = self.tracer.start_span(
            f"invoke_agent {self.name}",
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": self.name,
                "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model,
                "gen_ai.conversation.id": uuid.UUID(int=rng.getrandbits(128)).hex,
            },
        )
        prompt_tokens = max(50, int(rng.gauss(600, 80)))
        t = self._chat(root, start_ns, prompt_tokens, max(5, int(rng.gauss(40, 8))), "tool_calls")

        tool = rng.choices(TOOLS, TOOL_WEIGHTS)[0]
        failed = rng.random() < behaviour.tool_error_rate
        tool_span = self.tracer.start_span(
            f"execute_tool {tool}",
            context=trace.set_span_in_context(root),
            kind=SpanKind.INTERNAL,
            start_time=t,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": f"call_{rng.getrandbits(48):012x}",
                "gen_ai.tool.type": "function",
            },
        )
        if failed:
            tool_span.set_attribute("error.type", "ToolTimeout")
            tool_span.set_status(Status(StatusCode.ERROR, "tool timed out"))
        t += int(rng.uniform(20, 400) * MS)
        tool_span.end(end_time=t)

        answer_tokens = max(10, int(rng.gammavariate(4.0, behaviour.answer_tokens_mean / 4.0)))
        finish = "length" if rng.random() < behaviour.length_stop_share else "stop"
        t = self._chat(root, t, prompt_tokens + int(rng.uniform(50, 300)), answer_tokens, finish,
                       self._texts(answer_tokens, behaviour.subject))
        root.end(end_time=t)
        return 4
