"""The drift stage's configuration (the ``drift`` section): features and degradation signals
per record type, windows, reference, exact or sketch mode, and the HTML reports.

>>> DriftConfig().window_size, [f.name for f in DriftConfig().features["tools"]]
(1000, ['tool_name', 'status'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from observer.core.config import Section, parse_instant
from observer.core.extras import available
from observer.drift.peer_config import PeerDriftConfig


EMBEDDER_KEY = "embedder"
"""The segment key every ``embeddings`` stream has (vectors of one embedder only)."""
EVAL_KEY = "name"
"""The segment key every ``evals`` stream has (scores of one eval name only)."""
_OWN_KEY = {"embeddings": EMBEDDER_KEY, "evals": EVAL_KEY}
"""Record types keyed by the llm keys plus a key of their own, always."""

DriftMethod = Literal["wasserstein", "psi", "jensenshannon", "ks", "chisquare", "ztest", "auto"]


class FeatureSpec(Section):
    name: str = Field(
        description="Field of the record, or field.key for a key of a mapping field "
        "(inputs.age: one value per prediction instance)."
    )
    kind: Literal["numeric", "categorical", "embedding"] = Field(
        description="numeric (distributions of numbers), categorical (shares of values) or "
        "embedding (vectors, e.g. prompt_embedding of embeddings records)."
    )
    # A str, not a Literal: embedding methods come from a table (drift.embedding.methods),
    # and the engine checks every name against its kind at start.
    method: str | None = Field(
        None, description="Method deciding this feature's drift (default: by kind, see drift; "
        "embedding features: a method of drift.embedding_method's table)."
    )
    threshold: float | None = Field(
        None, description="This feature's threshold (default: drift.thresholds[method])."
    )
    columns: list[str] | None = Field(
        None, min_length=2,
        description="embedding kind only: build the vector from these numeric fields of the "
        "record (inputs.age, inputs.income, ...) instead of reading a vector field named "
        "`name`: multivariate drift of tabular records (e.g. method reconstruction_cv); a row "
        "missing any of them is skipped.",
    )

    @model_validator(mode="after")
    def _columns_need_embedding(self) -> "FeatureSpec":
        if self.columns is not None and self.kind != "embedding":
            raise ValueError(f"feature {self.name!r}: columns apply to kind embedding only")
        return self


def _default_features() -> dict[str, list[FeatureSpec]]:
    return {
        "llm": [
            FeatureSpec(name="input_tokens", kind="numeric"),
            FeatureSpec(name="output_tokens", kind="numeric"),
            FeatureSpec(name="latency_ms", kind="numeric"),
            FeatureSpec(name="finish_reason", kind="categorical"),
            # Text descriptors (collectors/normalize/text_descriptors.py): None on spans
            # without content, and a feature with no values is not scored, so traffic
            # without content is scored as before. Only those that vary in most traffic:
            # a flag or script that is constant (no refusals, never JSON, one language)
            # would count as an undrifted feature and dilute the dataset drift share; add
            # output_refusal, output_json_valid, output_script... where they vary.
            FeatureSpec(name="output_words", kind="numeric"),
            FeatureSpec(name="output_non_letter_share", kind="numeric"),
            FeatureSpec(name="input_words", kind="numeric"),
        ],
        "tools": [
            FeatureSpec(name="tool_name", kind="categorical"),
            FeatureSpec(name="status", kind="categorical"),
        ],
        # A change in the path mix (which prompts and tools a trace takes) is itself drift.
        "paths": [
            FeatureSpec(name="loop_iterations", kind="numeric"),
            FeatureSpec(name="llm_calls", kind="numeric"),
            FeatureSpec(name="tool_errors", kind="numeric"),
            FeatureSpec(name="duration_ms", kind="numeric"),
            FeatureSpec(name="path_signature", kind="categorical"),
        ],
        # Retrieval quality (issue 16): falling scores or margins, fewer documents, another
        # mix of top documents or sources. Only traces with retrieval spans produce records.
        "retrievals": [
            FeatureSpec(name="score_max", kind="numeric"),
            FeatureSpec(name="score_mean", kind="numeric"),
            FeatureSpec(name="score_margin", kind="numeric"),
            FeatureSpec(name="k", kind="numeric"),
            FeatureSpec(name="top1_document_id", kind="categorical"),
            FeatureSpec(name="data_source", kind="categorical"),
        ],
        # Evaluation scores and feedback joined to their segment (observer.evals-joined), one
        # stream per eval name: the score's distribution and the label mix (issue 16).
        "evals": [
            FeatureSpec(name="score", kind="numeric"),
            FeatureSpec(name="label", kind="categorical"),
        ],
        # Vectors only exist when content or vectors arrived (issue 15), so scoring them by
        # default costs nothing otherwise.
        "embeddings": [
            FeatureSpec(name="prompt_embedding", kind="embedding"),
            FeatureSpec(name="response_embedding", kind="embedding"),
        ],
        # predictions (inputs.<feature>, outputs.<output>) and gpu are model- and
        # fleet-specific: scored once features are configured for them.
    }


class DegradationSpec(Section):
    """One degradation signal: a change detector fed one record field, per segment."""

    name: str = Field(description="Signal name, unique per record type (results, metrics, policies).")
    field: str = Field(description="Record field fed to the detector, one value per record.")
    equals: str | None = Field(
        None, description="Feed 1 when the field equals this (as text) and 0 otherwise: a rate. "
        "Unset: the field's own value (numbers; booleans as 1/0; missing values skipped).",
    )
    rule: Literal["thumbs_down"] | None = Field(
        None, description="Instead of field/equals, a named value rule (drift.quality): "
        "thumbs_down feeds 1 for thumbs-down feedback (label thumbs_down, or score 0 of "
        "user_feedback), 0 for other feedback, and skips records that are not feedback.",
    )
    detector: Literal["adwin", "page_hinkley", "mean_test"] = Field(
        "adwin", description="Change detector: adwin, page_hinkley, or mean_test (a one-sided "
        "test of each block's mean against a fixed reference, false-alarm rate alpha per block).",
    )
    direction: Literal["up", "down", "both", "worse"] = Field(
        "up", description="Changes that count: up = the rate or value rose (a degradation); "
        "worse (evals only) = down, or up for the eval names in drift.quality.lower_is_better.",
    )
    delta: float | None = Field(
        None, gt=0, description="adwin: confidence (default 0.002); page_hinkley: tolerated "
        "change per value (default 0.005).",
    )
    threshold: float | None = Field(
        None, gt=0, description="page_hinkley only: lambda, in the field's unit (default 50)."
    )
    min_instances: int | None = Field(
        None, ge=1, description="page_hinkley only: values before any detection (default 30)."
    )
    clock: int | None = Field(
        None, ge=1, description="adwin only: look for a change every this many values (default 32)."
    )
    alpha: float | None = Field(
        None, gt=0, lt=0.5, description="mean_test only: false-alarm rate of one block test "
        "(default 0.001).",
    )
    reference_values: int | None = Field(
        None, ge=2, description="mean_test only: the first values, forming its fixed reference "
        "(default 200).",
    )
    block: int | None = Field(
        None, ge=2, description="mean_test only: values per tested block (default 100).",
    )

    @model_validator(mode="after")
    def _params_fit_the_detector(self) -> DegradationSpec:
        only = {"threshold": "page_hinkley", "min_instances": "page_hinkley", "clock": "adwin",
                "alpha": "mean_test", "reference_values": "mean_test", "block": "mean_test"}
        wrong = [k for k, d in only.items() if getattr(self, k) is not None and d != self.detector]
        if wrong:
            raise ValueError(f"degradation signal {self.name!r}: {', '.join(wrong)} do not apply "
                             f"to detector {self.detector}")
        if self.detector == "mean_test" and self.delta is not None:
            raise ValueError(f"degradation signal {self.name!r}: delta does not apply to "
                             "detector mean_test (alpha is its false-alarm rate)")
        if self.detector == "adwin" and self.delta is not None and self.delta >= 1:
            raise ValueError(f"degradation signal {self.name!r}: adwin delta must be < 1")
        return self


def _default_degradation() -> dict[str, list[DegradationSpec]]:
    return {
        "llm": [
            DegradationSpec(name="error_rate", field="error"),
            DegradationSpec(name="latency", field="latency_ms"),
        ],
        "tools": [DegradationSpec(name="error_rate", field="status", equals="error")],
        # Quality (drift.quality): the score got worse than the stream's first scores, and
        # the share of thumbs-down feedback rose.
        "evals": [
            DegradationSpec(name="score_fell", field="score", detector="mean_test",
                            direction="worse"),
            DegradationSpec(name="thumbs_down_rate", field="label", rule="thumbs_down"),
        ],
    }


class QualityConfig(Section):
    """Evaluation scores as a quality signal (record type ``evals``, drift.quality)."""

    lower_is_better: list[str] = Field(
        default_factory=lambda: ["hallucination", "toxicity"],
        description="Eval names whose score is better when lower: direction worse means up "
        "for them (every other name: higher is better).",
    )
    max_series: int = Field(
        500, ge=1, description="Segment x eval name series of observer_quality_score_mean at "
        "most; scores of further ones are still scored, not exported (eval names come from "
        "clients).",
    )


class DriftReportsConfig(Section):
    """Evidently HTML reports, one per drift episode, served by the admin API at /reports/{id}."""

    # Evidently is an extra: a core install serves no reports unless told to, and then fails
    # at start naming the extra (observer.core.extras) rather than at the first report.
    enabled: bool = Field(
        default_factory=lambda: available("evidently"),
        description="Serve /reports/{id} and link them in /api/v1/drift. Default: true when "
        "the `reports` extra (Evidently) is installed, else false; true without it fails at "
        "start.",
    )
    dir: Path = Field(
        Path(".observer/reports"), description="Where rendered reports are cached (one file each)."
    )
    # A report embeds Evidently's JavaScript bundle (~3.7 MB), so the cache is bounded.
    keep: int = Field(100, ge=1, description="Rendered reports kept on disk; the oldest go first.")
    max_records: int = Field(
        200_000, ge=1, description="Records read back from Kafka per window at most."
    )
    read_timeout_s: float = Field(
        30.0, gt=0, description="How long reading a window back from Kafka may take."
    )


class OnlineDriftConfig(Section):
    """The online detectors (embedding methods ``online_mmd`` and ``online_lsdd``, Cobb et al.
    2022): thresholds calibrated so that, with no change, a false detection comes once per
    ``ert`` records."""

    ert: float = Field(
        1000.0, gt=1, description="Expected run time: mean records between false detections "
        "when nothing changed (the chance of one in a window of m records is about "
        "1 - (1 - 1/ert)^m).",
    )
    window_size: int = Field(
        50, ge=2, description="Records in the detector's sliding test window; the reference "
        "needs at least 6 times as many rows (online_lsdd: 100 more).",
    )
    n_bootstraps: int = Field(
        4000, ge=100, description="Simulated no-change streams the thresholds are calibrated "
        "on (once per reference); more makes them steadier and calibration slower.",
    )
    seed: int = Field(0, description="Seeds the reference split and the calibration streams.")


class DriftConfig(Section):
    group_id: str = Field("observer-drift", description="Consumer group.")
    segment_keys: list[str] = Field(
        default_factory=lambda: ["service", "model"], description="Record fields forming a segment."
    )
    # GPU samples carry no service or model. Per device, as the GPU collector keys them on
    # Kafka: a segment then lives in one partition, which exactly-once restarts and
    # scale-out need (docs/stages/drift.md, "Record types and features").
    segment_keys_by_record_type: dict[str, list[str]] = Field(
        default_factory=lambda: {"gpu": ["node", "gpu_uuid", "mig_instance"]},
        description="Per record type, the record fields forming a segment instead of segment_keys.",
    )
    # 1000 records against a 2000-record reference (first_n below): Evidently's auto choice
    # then picks Wasserstein/Jensen-Shannon, which flagged 0-3.6% of same-distribution windows
    # here; a one-window reference made it pick chi-square and Z-tests: 35.8% (docs/stages/drift.md, "Why `auto` over 2000 reference records").
    window_size: int = Field(1000, ge=10, description="Records per count window (per segment).")
    numeric_method: DriftMethod = Field(
        "auto", description="Method that decides drift for numeric features (auto: Evidently's)."
    )
    categorical_method: DriftMethod = Field(
        "auto", description="Method that decides drift for categorical features (auto: Evidently)."
    )
    embedding_method: str = Field(
        "model", description="Method that decides drift for embedding features (a name of "
        "drift.embedding.methods: model, mmd, ratio, distance, ...); its threshold: "
        "drift.thresholds[method], else the method's default.",
    )
    checkpoints: bool = Field(
        True, description="Checkpoint engine state to the drift-state topic (exactly-once restarts)."
    )
    restore_lookback_s: float = Field(
        60.0,
        ge=0,
        description="On restore, also read back results published this long before the last "
        "committed batch (clock skew between engine hosts), to drop their replayed copies.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"wasserstein": 0.1, "psi": 0.1, "jensenshannon": 0.1},
        description="Drift when statistic >= threshold (Evidently 0.7 defaults).",
    )
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when this share of features drifted."
    )
    features: dict[str, list[FeatureSpec]] = Field(
        default_factory=_default_features, description="Features per record type."
    )
    degradation: dict[str, list[DegradationSpec]] = Field(
        default_factory=_default_degradation,
        description="Change detectors per record type: degradation signals per segment.",
    )
    window_kind: Literal["count", "tumbling", "sliding"] = Field(
        "count",
        description="count: window_size records; tumbling/sliding: by event time (the record's "
        "start time, else its Kafka timestamp).",
    )
    window_duration_s: float = Field(3600.0, gt=0, description="Time windows: length.")
    window_slide_s: float | None = Field(
        None, gt=0, description="Sliding windows: step; must divide window_duration_s."
    )
    allowed_lateness_s: float = Field(
        0.0,
        ge=0,
        description="Time windows close when event time passes their end + this; later "
        "records for them are dropped.",
    )
    mode: Literal["exact", "sketch", "auto"] = Field(
        "exact",
        description="exact: raw values; sketch: bounded sketches; auto: exact while within "
        "exact_budget_mb, sketches for the segments beyond.",
    )
    exact_budget_mb: float = Field(
        256.0, gt=0, description="auto mode: memory for raw values across all segments."
    )
    max_streams: int = Field(
        1000, ge=1,
        description="Streams (segment x record type) held at most. Past it, a new segment "
        "takes the place of a stream idle for drift.stream_idle_s, or else its records are "
        "skipped and counted (observer_drift_errors_total, reason stream_limit): "
        "a client inventing services, models or prompt versions cannot grow the engine's "
        "memory without bound. At the default windows an exact stream holds up to about 1 MB "
        "(llm, 7 features) or 8 MB (embeddings, 2 x 256 dimensions); mode auto bounds the "
        "exact part.",
    )
    stream_idle_s: float = Field(
        86400.0, ge=0,
        description="At drift.max_streams, a new segment takes the place of the stream idle "
        "longest, once that one has had no record for this long and is in no drift episode "
        "(observer_drift_streams_retired_total): its checkpoints, series and reference state "
        "are deleted, and "
        "if its segment comes back it starts again with a new reference. 0: streams are never "
        "retired, and a full cap refuses new segments.",
    )
    sketch_relative_accuracy: float = Field(
        0.01, gt=0, lt=0.5, description="Sketch mode: relative width of a numeric bucket."
    )
    sketch_top_k: int = Field(
        64, ge=1, description="Sketch mode: categories counted exactly; the rest are 'other'."
    )
    sketch_embedding_rows: int = Field(
        512, ge=2, description="Sketch mode: embedding rows kept per window (and reference) "
        "of an embedding feature, a seeded uniform sample of its records.",
    )
    reference: Literal["first_window", "first_n", "time_range", "parquet"] = Field(
        "first_n",
        description="Reference per segment: its first window, its first reference_records "
        "records, the records in [reference_start, reference_end), or a Parquet dataset.",
    )
    reference_records: int = Field(2000, ge=1, description="first_n: records in the reference.")
    reference_start: str = Field(
        "", description="time_range: start (ISO 8601 or Unix seconds), inclusive."
    )
    reference_end: str = Field("", description="time_range: end (ISO 8601 or Unix seconds).")
    reference_path: str = Field(
        "", description="parquet: a Parquet file or directory (segment columns optional)."
    )
    reference_history_values: int = Field(
        2, ge=0, le=100,
        description="Older reference versions per segment whose values are kept with the "
        "checkpoints (their metadata is always kept); 0 keeps only the current one's.",
    )

    @model_validator(mode="after")
    def _coherent_drift(self) -> "DriftConfig":
        if self.window_kind == "sliding":
            if self.window_slide_s is None:
                raise ValueError("window_kind sliding needs window_slide_s")
            steps = self.window_duration_s / self.window_slide_s
            if abs(steps - round(steps)) > 1e-9 or round(steps) < 1:
                raise ValueError(
                    f"window_slide_s ({self.window_slide_s}) must divide window_duration_s "
                    f"({self.window_duration_s})"
                )
        if self.reference == "time_range":
            start, end = parse_instant(self.reference_start), parse_instant(self.reference_end)
            if start >= end:
                raise ValueError("reference_start must be before reference_end")
        if self.reference == "parquet" and not self.reference_path:
            raise ValueError("reference parquet needs reference_path")
        return self
    reports: DriftReportsConfig = Field(
        default_factory=DriftReportsConfig, description="HTML reports, one per drift episode."
    )
    peer: PeerDriftConfig = Field(
        default_factory=PeerDriftConfig,
        description="Peer drift: each cluster's traffic against its fleet's (drift.peer).",
    )
    online: OnlineDriftConfig = Field(
        default_factory=OnlineDriftConfig,
        description="The online embedding detectors (methods online_mmd and online_lsdd).",
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig,
        description="Evaluation scores as a quality signal: which names are better lower.",
    )

    def keys_for(self, record_type: str) -> list[str]:
        """The record fields forming a segment of ``record_type``: its entry in
        ``segment_keys_by_record_type``, else ``segment_keys``. The collector stages key
        what they write by it, so they read it here (stages never import each other).

        >>> DriftConfig().keys_for("gpu"), DriftConfig().keys_for("llm")
        (['node', 'gpu_uuid', 'mig_instance'], ['service', 'model'])
        >>> DriftConfig().keys_for("embeddings")  # the llm keys plus the embedder
        ['service', 'model', 'embedder']
        >>> DriftConfig().keys_for("evals")  # the llm keys plus the eval name
        ['service', 'model', 'name']
        """
        by_type = self.segment_keys_by_record_type
        own_key = _OWN_KEY.get(record_type)
        if own_key and record_type not in by_type:
            # An LLM call's vectors, or scores of an LLM call's answers.
            record_type_keys = by_type.get("llm", self.segment_keys)
        else:
            record_type_keys = by_type.get(record_type, self.segment_keys)
        keys = list(record_type_keys)
        if own_key and own_key not in keys:
            # Vectors of two embedders (or dimensions), or scores of two evals, are never
            # compared: each starts a stream with its own reference, whatever the keys.
            keys.append(own_key)
        return keys
