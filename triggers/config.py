"""The trigger stage's configuration (the ``trigger`` section): policies, webhooks, Argo and
Kubeflow Pipelines runs, the Parquet export and the rendered retraining pipeline.

>>> TriggerConfig().policies[0].name, TriggerConfig().argo.workflow_template
('default', 'observer-retrain')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from observer.core.config import Section
from observer.core.extras import available
from observer.triggers.conditions import parse_condition, parse_signal


class WebhookConfig(Section):
    url: str = Field(description="Endpoint the signed webhook is POSTed to.")
    secret: SecretStr = Field(description="Standard Webhooks secret, whsec_<base64>.")
    timeout_s: float = Field(10.0, gt=0, description="Per delivery attempt.")
    max_attempts: int = Field(
        6, ge=1, description="Attempts before the delivery is dead-lettered in the ledger."
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay (with jitter).")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith("whsec_"):
            raise ValueError("webhook secret must look like whsec_<base64>")
        return v


class ConditionConfig(Section):
    """One condition of a combined policy (``all_of`` / ``any_of``)."""

    signal: str = Field(
        description="Window value: drift_share, dataset_drift, n, feature:<name> (its "
        "statistic), feature_drifted:<name>, degradation:<name> (1 when that detector found a "
        "change during the window, else 0), degradation_level:<name> (its level).",
    )
    op: Literal[">=", "<=", ">", "<"] = Field(">=", description="Comparison with the threshold.")
    threshold: float | None = Field(
        None,
        description="Value compared with (None: 0.5 for drift_share, 1 for the 1/0 detections; "
        "other signals must give one).",
    )
    for_windows: int = Field(
        1, ge=1, description="Consecutive windows (N) the comparison must hold in, the last one "
        "included.",
    )
    record_type: str | None = Field(
        None,
        description="Read another record type's windows (e.g. evals) of the same segment: the "
        "segments whose values agree on every key both have; None: the deciding window's own.",
    )
    eval: str | None = Field(
        None, min_length=1, max_length=256,
        description="evals only: read the streams of this eval name (e.g. faithfulness); "
        "record_type defaults to evals. A condition may also be written as text: "
        "'eval faithfulness fell', 'drift_share >= 0.5 for 2 windows'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # 'eval faithfulness fell': the readable form of the mapping (triggers.conditions).
        return parse_condition(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known(self) -> ConditionConfig:
        if self.eval is not None:
            if self.record_type is None:
                self.record_type = "evals"
            elif self.record_type != "evals":
                raise ValueError(f"condition {self.signal!r}: eval applies to record_type evals, "
                                 f"not {self.record_type}")
        row, _ = parse_signal(self.signal)  # ValueError naming the known signals
        if self.threshold is None:
            if row.default_threshold is None:
                raise ValueError(f"condition {self.signal!r} needs a threshold")
            self.threshold = row.default_threshold
        return self


# Single-signal knobs that a combined policy replaces (its conditions carry their own).
_SINGLE_SIGNAL_KNOBS = (
    "signal", "feature", "degradation", "threshold", "consecutive_windows", "window_of",
    "clear_threshold",
)


class PolicyConfig(Section):
    name: str = Field(
        "default", description="Names the policy in the ledger, metrics and episode ids."
    )
    signal: Literal["drift_share", "dataset_drift", "feature_statistic", "degradation"] = Field(
        "drift_share",
        description="Window value compared with the threshold (feature_statistic: the "
        "statistic of the feature named by `feature`; degradation: 1 when the detector of the "
        "degradation signal named by `degradation` found a change during the window, else 0).",
    )
    feature: str | None = Field(None, description="Feature whose statistic is the signal.")
    degradation: str | None = Field(
        None, description="Degradation signal (a drift.degradation name) whose detections count."
    )
    threshold: float = Field(0.5, description="A window qualifies when signal >= threshold.")
    all_of: list[ConditionConfig] | None = Field(
        None,
        description="Instead of signal/threshold: fire on a window where every condition "
        "holds (each for its for_windows).",
    )
    any_of: list[ConditionConfig] | None = Field(
        None,
        description="Instead of signal/threshold: fire on a window where at least one "
        "condition holds.",
    )
    consecutive_windows: int = Field(
        2, ge=1, description="Qualifying windows (N) among the last `window_of` to fire."
    )
    window_of: int | None = Field(
        None, ge=1, description="M of 'N of the last M windows'; None: M = N (N in a row)."
    )
    clear_windows: int = Field(
        0,
        ge=0,
        description="After a decision, windows in a row below `clear_threshold` that end the "
        "episode and re-arm the policy; 0 re-arms at once.",
    )
    clear_threshold: float | None = Field(
        None, description="Signal below which a window counts towards clearing (None: threshold)."
    )
    min_samples: int = Field(100, ge=0, description="Windows with fewer records never qualify.")
    cooldown_s: float = Field(3600.0, ge=0, description="Quiet time per segment after firing.")
    record_types: list[str] = Field(
        default_factory=lambda: ["llm", "tools"],
        description="Record types the policy watches (add embeddings to act on meaning: semantic "
        "drift of prompts and answers).",
    )
    segments: dict[str, str] = Field(
        default_factory=dict,
        description="Segment field -> glob pattern; the policy watches matching segments only.",
    )
    comparison: Literal["past", "fleet"] = Field(
        "past",
        description="Which drift results the policy reads: past (a segment against its own "
        "reference) or fleet (a cluster against its peers, drift.peer; the decision's reason "
        "names the cluster, and approval: true holds that cluster's retraining).",
    )
    actions: list[Literal["argo", "kfp", "armada"]] = Field(
        default_factory=list, description="Runs to start when the policy fires (besides webhooks)."
    )
    model_field: str = Field("model", description="Segment field naming the model (concurrency).")
    max_concurrent_runs: int = Field(
        1, ge=1, description="Runs per model in progress at once; more wait for one to finish."
    )
    approval: bool = Field(
        False, description="A fired decision needs approval before its actions (see approval_mode)."
    )
    approval_mode: Literal["ledger", "argo"] = Field(
        "ledger",
        description="ledger: the decision is held in observer's ledger, nothing is sent until "
        "`observer triggers approve` or POST /api/v1/triggers/{episode}/approve; argo: "
        "actions go out at once and the Argo run waits at a suspend step before training.",
    )
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="Standard Webhooks to deliver when the policy fires."
    )
    run_webhooks: list[WebhookConfig] = Field(
        default_factory=list,
        description="Standard Webhooks (type observer.run.completed) delivered when a run this "
        "policy started ends: succeeded, failed, lost or timed out (trigger.runs).",
    )

    @property
    def conditions(self) -> list[ConditionConfig]:
        """The combined policy's conditions (empty for a single-signal policy)."""
        return self.all_of or self.any_of or []

    @model_validator(mode="after")
    def _coherent(self) -> "PolicyConfig":
        if self.all_of is not None or self.any_of is not None:
            combined = "all_of" if self.all_of is not None else "any_of"
            if self.all_of is not None and self.any_of is not None:
                raise ValueError("give all_of or any_of, not both")
            if not self.conditions:
                raise ValueError(f"{combined} needs at least one condition")
            clash = sorted(set(_SINGLE_SIGNAL_KNOBS) & self.model_fields_set)
            if clash:
                raise ValueError(
                    f"{combined} replaces {', '.join(clash)}: each condition has its own "
                    "signal, op, threshold and for_windows"
                )
        if self.signal == "feature_statistic" and not self.feature:
            raise ValueError("signal feature_statistic needs `feature` (the feature's name)")
        if self.signal == "degradation" and not self.degradation:
            raise ValueError("signal degradation needs `degradation` (a drift.degradation name)")
        if self.window_of is not None and self.window_of < self.consecutive_windows:
            raise ValueError(
                f"window_of ({self.window_of}) must be >= consecutive_windows "
                f"({self.consecutive_windows})"
            )
        return self


class ArgoConfig(Section):
    server: str = Field("", description="Argo Server URL (https://argo.example:2746).")
    token: SecretStr | None = Field(None, description="Bearer token of the submitting account.")
    namespace: str = Field("argo", description="Namespace the workflows run in.")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_file: str = Field("", description="CA bundle to verify the server with (PEM path).")
    client_cert: str = Field("", description="Client certificate (PEM path) for mutual TLS.")
    client_key: str = Field("", description="Client key (PEM path) for mutual TLS.")
    mode: Literal["template", "inline"] = Field(
        "template",
        description="template: submit from the WorkflowTemplate; inline: create the Workflow.",
    )
    workflow_template: str = Field("observer-retrain", description="WorkflowTemplate name.")
    name_prefix: str = Field("retrain-", description="Workflow name = prefix + episode id.")
    service_account: str = Field("", description="Service account the workflow runs as.")
    timeout_s: float = Field(30.0, gt=0, description="Per request.")
    max_attempts: int = Field(10, ge=1, description="Attempts before dead-lettering.")
    backoff_initial_s: float = Field(2.0, gt=0, description="First retry delay (full jitter).")
    backoff_max_s: float = Field(600.0, gt=0, description="Longest retry delay.")
    busy_retry_s: float = Field(
        300.0, gt=0, description="Re-check after this when max_concurrent_runs are in progress."
    )


class KfpConfig(Section):
    host: str = Field("", description="Kubeflow Pipelines API URL (https://kfp.example).")
    token: SecretStr | None = Field(None, description="Bearer token.")
    pipeline_id: str = Field("", description="Pipeline to run.")
    pipeline_version_id: str = Field("", description="Its version.")
    experiment_id: str = Field("", description="Experiment the runs belong to (optional).")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    timeout_s: float = Field(30.0, gt=0, description="Per request.")
    max_attempts: int = Field(10, ge=1, description="Attempts before dead-lettering.")


class RunsConfig(Section):
    """How submitted runs (Argo, KFP) are followed to their end (observer.triggers.tracking)."""

    poll_interval_s: float = Field(
        30.0, gt=0, description="Seconds between two status polls of one run in progress."
    )
    timeout_s: float = Field(
        86400.0,
        gt=0,
        description="A run not finished this long after its submission is reported "
        "run_timed_out and no longer polled (it is not stopped upstream).",
    )
    lost_after_polls: int = Field(
        2,
        ge=1,
        description="Polls in a row answered 404 before a submitted run is reported run_lost.",
    )
    max_polls_per_tick: int = Field(
        8, ge=1, description="Status polls per tick at most; the rest wait for the next tick."
    )


class PromotionConfig(Section):
    """Promotion callbacks of the retraining pipeline (``POST /api/v1/episodes/{id}/promotion``,
    observer.triggers.promotion) and the re-baselining they start."""

    secret: SecretStr | None = Field(
        None, description="Standard Webhooks secret (whsec_<base64>) the pipeline signs its "
        "promotion callbacks with; unset: callbacks are refused (503)."
    )
    tolerance_s: float = Field(
        300.0, gt=0, description="How far a callback's webhook-timestamp may be from now "
        "(seconds); a webhook-id seen before is refused as a replay."
    )
    records: int | None = Field(
        None, ge=1, le=10_000_000, description="Records of the promoted model's traffic that "
        "make its segment's new reference version; unset: the current reference's size."
    )
    model_field: str = Field(
        "", max_length=64, description="A record field naming the model version (e.g. model): "
        "when set, only records whose field equals the promoted model_version enter the new "
        "reference (records without the field all do); empty: the next records, whatever model."
    )

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith("whsec_"):
            raise ValueError("promotion secret must look like whsec_<base64>")
        return v


class ArmadaConfig(Section):
    """Training jobs submitted to an Armada queue (observer.triggers.armada)."""

    server: str = Field("", description="Armada server's gRPC address (host:port).")
    use_tls: bool = Field(False, description="Connect with TLS (system CA bundle or ca_file).")
    ca_file: str = Field("", description="CA bundle (PEM path) to verify the server with.")
    token: SecretStr | None = Field(
        None, description="Bearer token sent as gRPC `authorization` metadata (OIDC)."
    )
    queue: str = Field("observer", description="Armada queue the jobs are submitted to.")
    namespace: str = Field("default", description="Kubernetes namespace the job pods run in.")
    priority: float = Field(1.0, ge=0, description="Job priority within the queue.")
    priority_class: str = Field(
        "", description="Pod priorityClassName (one the Armada server allows); empty: none."
    )
    cpu: str = Field("4", description="CPU of each pod (requests = limits, as Armada asks).")
    memory: str = Field("16Gi", description="Memory of each pod (requests = limits).")
    gang_node_uniformity_label: str = Field(
        "",
        description="Node label the pods of a multi-node job must share "
        "(armadaproject.io/gangNodeUniformityLabel); empty: none.",
    )
    timeout_s: float = Field(30.0, gt=0, description="Per gRPC call.")
    max_attempts: int = Field(10, ge=1, description="Attempts before dead-lettering.")
    backoff_initial_s: float = Field(2.0, gt=0, description="First retry delay (full jitter).")
    backoff_max_s: float = Field(600.0, gt=0, description="Longest retry delay.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str, info: Any) -> str:
        # Armada would refuse the job (permanently) on every episode: refuse it at start.
        if not _QUANTITY.fullmatch(v):
            raise ValueError(f"trigger.armada.{info.field_name}: {v!r} is not a Kubernetes "
                             "quantity (4, 500m, 16Gi)")
        return v


# Kubernetes' resource.Quantity: a decimal number and an optional SI/binary suffix or exponent.
_QUANTITY = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?\d+)?")


class ExportConfig(Section):
    # pyarrow is the `parquet` extra: a core install exports nothing unless told to, and then
    # fails at start naming the extra (observer.core.extras).
    uri: str = Field(
        default_factory=lambda: ".observer/exports" if available("pyarrow") else "",
        description="Where drifted windows go as Parquet: a path or a URI (s3://bucket/prefix). "
        "Empty: no exports (webhooks and runs get no data locations). Default: "
        "`.observer/exports` when the `parquet` extra (pyarrow) is installed, else empty.",
    )
    max_records: int = Field(200_000, ge=1, description="Records read back per window at most.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the URI's filesystem."
    )


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class PipelineConfig(Section):
    """What `observer pipeline render` writes; runs get episode values as parameters."""

    image: str = Field("ghcr.io/observer/observer:0.1.0", description="observer's image.")
    service_account: str = Field("observer-pipeline", description="The workflow's pods' account.")
    spark_image: str = Field("ghcr.io/observer/observer-spark:0.1.0", description="Spark image.")
    spark_version: str = Field("4.0.1", description="Spark version of the image.")
    spark_executors: int = Field(2, ge=1, description="Spark executor instances.")
    spark_memory: str = Field("2g", description="Driver and executor memory.")
    history_uri: str = Field("", description="Earlier training data merged in (Parquet).")
    output_uri: str = Field("s3://observer/runs", description="Base of each run's outputs.")
    trainer: Literal["trainjob", "pytorchjob", "jobset"] = Field(
        "trainjob", description="Training resource kind."
    )
    trainer_runtime: str = Field("torch-distributed", description="TrainJob runtimeRef name.")
    train_image: str = Field("ghcr.io/observer/trainer:0.1.0", description="Training image.")
    train_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "train"], description="Training command."
    )
    num_nodes: int = Field(1, ge=1, description="Training nodes (gang size).")
    gpus_per_node: int = Field(1, ge=0, description="nvidia.com/gpu per node.")
    scheduler: Literal["none", "kueue", "volcano", "yunikorn"] = Field(
        "none", description="Gang scheduling hook."
    )
    queue: str = Field("default", description="Kueue LocalQueue, Volcano or YuniKorn queue.")
    model_name: str = Field("support-agent", description="InferenceService name.")
    model_format: str = Field("pytorch", description="predictor.model.modelFormat.name.")
    serving_model_uri: str = Field("", description="storageUri of the model now serving.")
    deployment_mode: Literal["Knative", "Standard"] = Field(
        "Standard", description="KServe deployment mode of the canary."
    )
    canary_traffic_percent: int = Field(10, ge=1, le=99, description="Canary's traffic share.")
    serving: Literal["inferenceservice", "llminferenceservice"] = Field(
        "inferenceservice",
        description="How the candidate is served: a KServe InferenceService canary, or a KServe "
        "LLMInferenceService (multi-node LLM serving on a LeaderWorkerSet): the candidate as "
        "its own `<model_name>-candidate` service, promoted into `model_name` once Ready "
        "(`observer pipeline render --serving` overrides this).",
    )
    llm_pipeline_parallel: int = Field(
        2, ge=1, description="LLMInferenceService: nodes per replica (spec.parallelism.pipeline, "
        "the LeaderWorkerSet group size: one leader, the rest workers)."
    )
    llm_tensor_parallel: int = Field(
        1, ge=1, description="LLMInferenceService: GPUs per node (spec.parallelism.tensor)."
    )
    llm_replicas: int = Field(1, ge=1, description="LLMInferenceService: serving replicas.")
    kubectl_image: str = Field(
        "registry.k8s.io/kubectl:v1.34.1",
        description="Image of the step that waits for the LLMInferenceService candidate to be "
        "Ready (kubectl wait).",
    )
    llm_ready_timeout: str = Field(
        "30m", description="LLMInferenceService: how long the candidate may take to be Ready."
    )
    canary_soak: str = Field("10m", description="How long the canary serves before promotion.")
    eval_metric: str = Field("accuracy", description="Metric the evaluation gate compares.")
    eval_higher_is_better: bool = Field(True, description="Direction of the metric.")
    eval_min_delta: float = Field(0.0, description="Candidate must beat serving by this much.")
    promotion_callback_url: str = Field(
        "", description="observer's admin API URL as the workflow's pods reach it: when set, a "
        "notify-promotion step after promote (and notify-rollback after the exit handler's "
        "rollback) sends the signed promotion callback (observer.triggers.pipeline.notify)."
    )
    promotion_secret_name: str = Field(
        "observer-promotion", description="Secret in the workflow's namespace holding the "
        "callback's signing secret (key `secret`, = trigger.promotion.secret) and, optionally, "
        "the admin token (key `admin-token`)."
    )
    run_as_user: int | None = Field(
        10001, ge=1, description="UID every rendered pod runs as (securityContext.runAsUser; "
        "the restricted Pod Security Standard refuses 0). Every pod and container the pipeline "
        "creates also gets runAsNonRoot, a RuntimeDefault seccomp profile, "
        "allowPrivilegeEscalation: false and capabilities drop ALL. null: no runAsUser, the "
        "images' own USER (numeric and not root, or the kubelet refuses the pod)."
    )
    runtime_class_name: str = Field(
        "", description="runtimeClassName of every pod the pipeline creates (the workflow's "
        "pods, Spark driver and executors, training, serving) and of the Armada jobs' pods: a "
        "sandbox such as gVisor (`gvisor`) or Kata (`kata`); the cluster must have that "
        "RuntimeClass. \"\": the node's default runtime. A TrainJob cannot carry one (set it in "
        "the ClusterTrainingRuntime `trainer_runtime`): use trainer pytorchjob or jobset."
    )

    @field_validator("runtime_class_name")
    @classmethod
    def _runtime_class(cls, value: str) -> str:
        # A RuntimeClass name is a DNS subdomain (RFC 1123); anything else the API refuses.
        if value and (len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value)):
            raise ValueError(f"runtime_class_name {value!r} is not a RuntimeClass name (lowercase "
                             "letters, digits, '-' and '.', starting and ending alphanumeric)")
        return value

    @model_validator(mode="after")
    def _trainjob_runtime_class(self) -> PipelineConfig:
        if self.runtime_class_name and self.trainer == "trainjob":
            raise ValueError(
                "trigger.pipeline.runtime_class_name cannot reach a TrainJob's pods (its "
                "runtimePatches have no runtimeClassName): set runtimeClassName in the "
                f"ClusterTrainingRuntime {self.trainer_runtime!r} and leave runtime_class_name "
                "empty, or use trainer: pytorchjob or jobset")
        return self


class TriggerConfig(Section):
    group_id: str = Field("observer-trigger", description="Consumer group.")
    ledger_path: Path = Field(Path(".observer/ledger.sqlite"), description="SQLite ledger file.")
    policies: list[PolicyConfig] = Field(
        default_factory=lambda: [PolicyConfig()],
        description="Policies turning drift results into decisions and actions.",
    )
    argo: ArgoConfig = Field(default_factory=ArgoConfig)
    kfp: KfpConfig = Field(default_factory=KfpConfig)
    armada: ArmadaConfig = Field(default_factory=ArmadaConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    promotion: PromotionConfig = Field(
        default_factory=PromotionConfig,
        description="Promotion callbacks: re-baselining and closing episodes.",
    )
    export: ExportConfig = Field(default_factory=ExportConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
