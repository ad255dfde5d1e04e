"""The restricted Pod Security Standard for every pod the retraining pipeline creates.

A namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` admits a pod only when
it runs as non-root, with a ``RuntimeDefault`` (or ``Localhost``) seccomp profile, and every
container forbids privilege escalation and drops ``ALL`` capabilities (no host namespaces, no
hostPath). :func:`pod_context` and :func:`container_context` are those settings;
:func:`restrict` puts them, and the sandbox runtime class (``pipeline.runtime_class_name``:
gVisor, Kata), on a Kubernetes pod spec. The renderer (:mod:`~.render`,
:mod:`~.llm_serving`) and the Armada jobs (:mod:`observer.triggers.armada_jobs`) use them
wherever an upstream resource carries a pod spec, or the parts of one its schema allows.

>>> from observer.triggers.config import PipelineConfig
>>> pod = restrict({"containers": [{"name": "c", "image": "i"}]},
...                PipelineConfig(runtime_class_name="gvisor", trainer="jobset"))
>>> pod["runtimeClassName"], pod["securityContext"]["runAsUser"]
('gvisor', 10001)
>>> pod["containers"][0]["securityContext"]["capabilities"]
{'drop': ['ALL']}
"""

from __future__ import annotations

import json
from typing import Any

from observer.triggers.config import PipelineConfig

SECCOMP = {"type": "RuntimeDefault"}


def pod_context(p: PipelineConfig) -> dict[str, Any]:
    """The pod-level ``securityContext``: non-root (``run_as_user``), RuntimeDefault seccomp."""
    ctx: dict[str, Any] = {"runAsNonRoot": True}
    if p.run_as_user is not None:
        # Without a numeric UID the kubelet refuses an image whose USER is a name.
        ctx["runAsUser"] = p.run_as_user
    ctx["seccompProfile"] = dict(SECCOMP)
    return ctx


def container_context() -> dict[str, Any]:
    """A container's ``securityContext``: no privilege escalation, no capabilities.

    >>> container_context()["allowPrivilegeEscalation"]
    False
    """
    # runAsNonRoot and seccomp again here: a container's own context wins over the pod's, and
    # some specs (a KServe model container, Spark's) are merged into pods observer does not own.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": dict(SECCOMP),
    }


def runtime_class(p: PipelineConfig) -> dict[str, str]:
    """``{"runtimeClassName": ...}`` when ``runtime_class_name`` is set, else ``{}``."""
    return {"runtimeClassName": p.runtime_class_name} if p.runtime_class_name else {}


def restrict(pod: dict[str, Any], p: PipelineConfig) -> dict[str, Any]:
    """``pod`` (a ``v1.PodSpec`` as a dict) with the restricted contexts and the runtime class.

    Settings ``pod`` already has win, except that nothing may loosen the restricted ones.
    """
    out = {**pod, **runtime_class(p)}
    out["securityContext"] = {**(pod.get("securityContext") or {}), **pod_context(p)}
    for key in ("initContainers", "containers"):
        if key in pod:
            out[key] = [with_container_context(c) for c in pod[key]]
    return out


def with_container_context(container: dict[str, Any]) -> dict[str, Any]:
    """``container`` with :func:`container_context` merged into its ``securityContext``."""
    return {**container,
            "securityContext": {**(container.get("securityContext") or {}), **container_context()}}


def pod_spec_patch(p: PipelineConfig) -> str | None:
    """Argo's workflow-level ``podSpecPatch`` (JSON text) for the runtime class, or ``None``.

    Argo's WorkflowSpec has ``securityContext`` but no ``runtimeClassName``; its pod spec patch
    is merged into every pod of the workflow, the executor's resource-step pods included.

    >>> pod_spec_patch(PipelineConfig(runtime_class_name="kata", trainer="jobset"))
    '{"runtimeClassName":"kata"}'
    >>> pod_spec_patch(PipelineConfig()) is None
    True
    """
    rc = runtime_class(p)
    return json.dumps(rc, separators=(",", ":")) if rc else None
