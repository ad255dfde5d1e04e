"""Multivariate drift of tabular records: an embedding feature built from numeric columns.

A model's inputs keep their marginal distributions while the relation between them breaks (the
case NannyML's data reconstruction was made for): each column alone does not drift, the vector
of the columns does, scored with NannyML's rule (``reconstruction``) in the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, Prediction, decode, encode
from observer.core.topics import Topics
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.engine import DriftEngine
from observer.drift.record_types import check_features

TOPICS = Topics.from_config(KafkaConfig())
INSTANCES = 10  # per request: one row each


def _requests(rng: np.random.Generator, n: int, related: bool, start: int) -> list[Message]:
    out = []
    for i in range(n):
        a = rng.normal(size=INSTANCES)
        noise = rng.normal(size=INSTANCES)
        # Related: b follows a. Broken: b is as spread as before but no longer follows a.
        b = 0.95 * a + 0.31 * noise if related else np.sqrt(0.95**2 + 0.31**2) * noise
        c = rng.normal(size=INSTANCES)
        p = Prediction(service="loans", model="m1", request_id=f"r{start + i}", protocol="v2",
                       instances=INSTANCES, inputs={"a": a.tolist(), "b": b.tolist(),
                                                    "c": c.tolist()})
        out.append(Message(TOPICS.predictions, 0, start + i, b"loans|m1", encode(p), 0))
    return out


def test_a_broken_relation_drifts_the_vector_not_the_columns() -> None:
    cfg = DriftConfig(
        window_size=500, reference_records=2000, checkpoints=False, degradation={},
        features={"predictions": [
            FeatureSpec(name="inputs.a", kind="numeric"),
            FeatureSpec(name="inputs.b", kind="numeric"),
            FeatureSpec(name="inputs_abc", kind="embedding", method="reconstruction",
                        columns=["inputs.a", "inputs.b", "inputs.c"]),
        ]},
    )
    engine = DriftEngine(cfg, TOPICS)
    rng = np.random.default_rng(3)
    messages = _requests(rng, 300, True, 0) + _requests(rng, 100, False, 300)
    results = [decode(o.value) for o in engine.process(messages) if o.topic == TOPICS.drift]
    by_window = {r.window_index: {f.name: f for f in r.features} for r in results
                 if isinstance(r, DriftResult)}
    # 3000 related rows: the reference (2000) and windows 1-2; then 1000 broken ones: 3-4.
    assert set(by_window) >= {1, 2, 3, 4}
    for w in (1, 2):
        assert not by_window[w]["inputs_abc"].drifted, by_window[w]["inputs_abc"]
    for w in (3, 4):
        vector = by_window[w]["inputs_abc"]
        assert vector.kind == "embedding" and vector.method == "reconstruction"
        assert vector.drifted, vector
        assert vector.evidence is not None and vector.evidence.unlike
        assert all(u.trace_id.startswith("r") and int(u.trace_id[1:]) >= 300
                   for u in vector.evidence.unlike)
        assert not by_window[w]["inputs.a"].drifted and not by_window[w]["inputs.b"].drifted


def test_columns_are_checked_against_the_record() -> None:
    with pytest.raises(ValueError, match="'inputz' is not a field of predictions records"):
        check_features("predictions", [FeatureSpec(name="v", kind="embedding",
                                                   columns=["inputs.a", "inputz.b"])])
    with pytest.raises(ValueError, match="columns apply to kind embedding only"):
        FeatureSpec(name="v", kind="numeric", columns=["inputs.a", "inputs.b"])
