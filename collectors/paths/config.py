"""Trace grouping's configuration (the ``paths`` section).

>>> PathsConfig().timeout_s
300.0
"""

from __future__ import annotations

from pydantic import Field

from observer.core.config import Section


class PathsConfig(Section):
    group_id: str = Field("observer-paths", description="Consumer group of trace grouping.")
    grace_s: float = Field(
        5.0, ge=0, description="A trace closes this long after its root span arrived."
    )
    timeout_s: float = Field(
        300.0, gt=0, description="A trace without a root closes this long after its first span."
    )
    max_loop_iterations: int = Field(
        10, ge=1, description="Traces with more agent loop iterations are flagged."
    )
    max_open_traces: int = Field(
        100_000, ge=1, description="Open traces held; the oldest closes early above this."
    )
