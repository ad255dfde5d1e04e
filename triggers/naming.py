"""Kubernetes-safe names and labels derived from episodes, policies and segments.

Label values allow at most 63 characters of ``[A-Za-z0-9_.-]``, starting and ending with an
alphanumeric; segment keys (``shop|gpt-4o``) and policy names need not. A value that had to be
changed gets a short hash of the original, so two different segments never share a label.

>>> label_value("shop|gpt-4o")
'shop_gpt-4o-163abed3'
>>> label_value("retrain")
'retrain'
>>> workflow_name("retrain-", "31f3f78f1c483357d7c666373bedee2c")
'retrain-31f3f78f1c483357d7c666373bedee2c'
"""

from __future__ import annotations

import hashlib
import re

LABEL_PREFIX = "observer.dev"
POLICY_LABEL = f"{LABEL_PREFIX}/policy"
SEGMENT_LABEL = f"{LABEL_PREFIX}/segment"
EPISODE_LABEL = f"{LABEL_PREFIX}/episode"
MODEL_LABEL = f"{LABEL_PREFIX}/model"
SEGMENT_ANNOTATION = f"{LABEL_PREFIX}/segment-key"
# Set by the Argo controller on every workflow once it has finished.
ARGO_COMPLETED_LABEL = "workflows.argoproj.io/completed"

_LABEL_OK = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_NAME_OK = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def label_value(text: str) -> str:
    """``text`` as a valid label value, unchanged when it already is one."""
    if _LABEL_OK.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:54].strip("_.-")
    return f"{cleaned}-{digest}" if cleaned else digest


def workflow_name(prefix: str, episode_id: str) -> str:
    """The run's name: the episode's, so a repeated submission is answered 409.

    >>> workflow_name("Retrain_", "abc")
    Traceback (most recent call last):
    ...
    ValueError: workflow name 'Retrain_abc' is not a DNS-1123 label (prefix 'Retrain_')
    """
    name = f"{prefix}{episode_id}"
    if not _NAME_OK.match(name):
        raise ValueError(f"workflow name {name!r} is not a DNS-1123 label (prefix {prefix!r})")
    return name
