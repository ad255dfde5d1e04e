"""The normaliser's configuration (the ``normalizer`` section), message content included.

``metrics_group_id`` is the GenAI metrics stage's consumer group: it has lived in this
section since before that stage had a package of its own, and YAML files still say so.

>>> NormalizerConfig().content.capture
False
"""

from __future__ import annotations

from pydantic import Field

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


class NormalizerConfig(Section):
    group_id: str = Field("observer-normalizer", description="Consumer group.")
    content: ContentConfig = Field(default_factory=ContentConfig)
    metrics_group_id: str = Field(
        "observer-genai-metrics", description="Consumer group of the GenAI metrics stage."
    )
