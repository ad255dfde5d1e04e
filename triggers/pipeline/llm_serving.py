"""The deploy steps for multi-node LLM serving: KServe ``LLMInferenceService`` on LeaderWorkerSet.

With ``pipeline.serving: llminferenceservice`` (``observer pipeline render --serving
llminferenceservice``) the retraining workflow serves the candidate as an
``LLMInferenceService`` (serving.kserve.io/v1alpha1). With ``spec.worker`` set, KServe's
controller runs every replica as a LeaderWorkerSet group of ``spec.parallelism.pipeline``
pods (``template``: the leader, ``worker``: the others), each with
``spec.parallelism.tensor`` GPUs.

An ``LLMInferenceService`` has no traffic split field (unlike an ``InferenceService``'s
``canaryTrafficPercent``), so the canary is a second service:

===================  ===========================================================================
step                 what it does
===================  ===========================================================================
canary               create ``<model_name>-candidate`` serving the new model (deleted with the
                     workflow: owner reference)
soak                 wait ``canary-soak``
canary-health        ``kubectl wait --for=condition=Ready`` on the candidate
                     (``llm_ready_timeout``): its ``Ready`` condition is a list entry, which an
                     Argo resource condition cannot select by content
promote              apply ``<model_name>`` with the candidate's model URI
retire-candidate     delete the candidate service
rollback (on exit)   apply ``<model_name>`` with the serving model's URI, when a step failed
===================  ===========================================================================

>>> from observer.triggers.config import PipelineConfig
>>> doc = llm_inference_service(PipelineConfig(llm_pipeline_parallel=4), "canary",
...                             model_uri="s3://m/v2", serving_uri="s3://m/v1",
...                             namespace="argo", labels={})
>>> doc["metadata"]["name"], doc["spec"]["parallelism"], doc["spec"]["model"]["uri"]
('support-agent-candidate', {'tensor': 1, 'pipeline': 4}, 's3://m/v2')
"""

from __future__ import annotations

from typing import Any

from observer.triggers.config import PipelineConfig
from observer.triggers.pipeline.security_context import container_context, restrict

API_VERSION = "serving.kserve.io/v1alpha1"
KIND = "LLMInferenceService"
PHASES = ("canary", "promote", "rollback")


def candidate_name(p: PipelineConfig) -> str:
    """The canary's service name (the promoted model keeps ``model_name``)."""
    return f"{p.model_name}-candidate"


def _container(p: PipelineConfig) -> dict[str, Any]:
    # KServe merges this with its LLMInferenceServiceConfig presets (the vLLM image, args,
    # probes); the container named `main` is the model server.
    gpus = {"nvidia.com/gpu": p.llm_tensor_parallel}
    return {"name": "main", "resources": {"limits": dict(gpus), "requests": dict(gpus)}}


def _pod(p: PipelineConfig) -> dict[str, Any]:
    # The leader's and the workers' pod specs: restricted, under the runtime class if set.
    return restrict({"containers": [_container(p)]}, p)


def llm_inference_service(
    p: PipelineConfig,
    phase: str,
    *,
    model_uri: str,
    serving_uri: str,
    namespace: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The ``LLMInferenceService`` of a deploy phase: ``canary``, ``promote`` or ``rollback``."""
    if phase not in PHASES:
        raise ValueError(f"unknown deploy phase {phase!r}; known: {', '.join(PHASES)}")
    spec: dict[str, Any] = {
        "model": {"uri": serving_uri if phase == "rollback" else model_uri, "name": p.model_name},
        "replicas": p.llm_replicas,
        "parallelism": {"tensor": p.llm_tensor_parallel, "pipeline": p.llm_pipeline_parallel},
        "template": _pod(p),
        # A managed HTTPRoute and Gateway: the service gets its own endpoint.
        "router": {"route": {}, "gateway": {}},
    }
    if p.llm_pipeline_parallel > 1:
        # Present: a LeaderWorkerSet of `pipeline` pods per replica; absent: one pod each.
        spec["worker"] = _pod(p)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": candidate_name(p) if phase == "canary" else p.model_name,
            "namespace": namespace,
            "labels": labels,
        },
        "spec": spec,
    }


def ready_wait(p: PipelineConfig, namespace: str) -> dict[str, Any]:
    """The ``canary-health`` template: wait for the candidate's ``Ready`` condition."""
    return {
        "name": "canary-health",
        "container": {
            "image": p.kubectl_image,
            "command": ["kubectl"],
            "args": [
                "wait", "--for=condition=Ready", f"--timeout={p.llm_ready_timeout}",
                "-n", namespace, f"llminferenceservice/{candidate_name(p)}",
            ],
            "securityContext": container_context(),
        },
    }


def reference(p: PipelineConfig, namespace: str, name: str) -> dict[str, Any]:
    """Just enough of a service to name it (a ``delete`` step's manifest)."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}}
