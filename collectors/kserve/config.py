"""The KServe pairing stage's configuration (the ``kserve`` section).

>>> KServeConfig().pair_timeout_s
30.0
"""

from __future__ import annotations

from pydantic import Field

from observer.core.config import Section


class KServeConfig(Section):
    """KServe inference logger intake: the pairing stage (``observer predictions``)."""

    group_id: str = Field("observer-predictions", description="Consumer group of the pairing.")
    pair_timeout_s: float = Field(
        30.0, gt=0, description="A request or response whose partner has not come after this "
        "is written alone (paired: false).",
    )
    max_pending: int = Field(
        100_000, ge=1, description="Unpaired events held; the oldest is written alone above."
    )
    max_features: int = Field(64, ge=1, description="Input (and output) columns kept per record.")
    max_instances: int = Field(1000, ge=1, description="Instances kept per record.")
    max_string_chars: int = Field(
        64, ge=0, description="Longer string values are replaced by sha256:<16 hex>."
    )
