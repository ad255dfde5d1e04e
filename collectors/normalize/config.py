"""The normaliser's configuration (the ``normalizer`` section), message content included.

``metrics_group_id`` is the GenAI metrics stage's consumer group: it has lived in this
section since before that stage had a package of its own, and YAML files still say so.

>>> NormalizerConfig().content.capture
False
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from observer.core.config import Section


class ContentConfig(Section):
    """LLM message content: by default only counts, lengths and hashes are recorded."""

    capture: bool = Field(
        False, description="Store prompts and completions (redacted, capped) on observer.llm."
    )
    max_chars: int = Field(4096, ge=0, description="Characters stored per side (input, output).")
    redact_builtin: bool = Field(
        True, description="Redact e-mail addresses, API keys, bearer tokens, key=value secrets."
    )
    redact_hook: str = Field(
        "", description="'package.module:function' taking and returning a string, run after "
        "the built-in redaction.",
    )


class EmbeddingsConfig(Section):
    """Prompt and response embeddings on ``observer.embeddings`` (no content is kept)."""

    enabled: bool = Field(
        True, description="Embed the prompt and response of every LLM call that carries "
        "content, and pass on vectors sent in traces, to observer.embeddings.",
    )
    embedder: Literal["hashing", "fastembed"] = Field(
        "hashing", description="hashing: hashed word and character n-grams, no weights, "
        "deterministic; fastembed: a local ONNX model from model_path (the embeddings extra).",
    )
    dimension: int = Field(
        256, ge=8, le=4096, description="Vector length of the hashing embedder (fastembed: the "
        "model's own).",
    )
    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="Seed of the hashing embedder's hash: another seed "
        "gives other vectors, so another embedder id and stream.",
    )
    model_path: str = Field(
        "", description="fastembed: directory holding the model (model.onnx, tokenizer.json, "
        "config.json...). Read from there only: nothing is ever downloaded.",
    )
    model_name: str = Field(
        "", description="fastembed: the model's name (part of the embedder id); empty: the "
        "model directory's name.",
    )
    max_chars: int = Field(
        4000, ge=1, le=1_000_000, description="Characters of each prompt or response embedded "
        "(its start): bounds the cost of one huge message.",
    )
    batch_size: int = Field(
        1024, ge=1, le=65536, description="Most texts per embedder call: a normaliser batch "
        "with more is embedded in several calls.",
    )
    trace_vectors: bool = Field(
        True, description="Pass on vectors sent in traces (OpenInference embedding spans, "
        "OpenLLMetry db.query.embeddings events) as they are.",
    )
    max_trace_dimension: int = Field(
        4096, ge=1, le=65536, description="Longest vector taken from a trace; longer ones are "
        "dropped and counted.",
    )
    snippet_chars: int = Field(
        200, ge=0, le=4096, description="Under content.capture only: characters of the "
        "(redacted) prompt and response kept on each record as drift evidence.",
    )


class NormalizerConfig(Section):
    group_id: str = Field("observer-normalizer", description="Consumer group.")
    content: ContentConfig = Field(default_factory=ContentConfig)
    descriptors: bool = Field(
        True, description="Text descriptors (words, sentences, non-letter share, refusal, JSON "
        "validity, links, script) of each side's content on observer.llm records, whether or "
        "not content is captured.",
    )
    refusal_patterns: dict[str, list[str]] = Field(
        default_factory=dict, description="Refusal phrases, language -> regular expressions "
        "matched against the lowercased start of a text; a language named here replaces its "
        "built-in list (en, de, fr, es, pt, it, zh, ja, ru), others are added.",
    )
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    metrics_group_id: str = Field(
        "observer-genai-metrics", description="Consumer group of the GenAI metrics stage."
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _patterns_compile(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for language, patterns in value.items():
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(
                        f"refusal_patterns[{language!r}]: {pattern!r} is not a regular "
                        f"expression: {e}"
                    ) from None
        return value
