"""Which pod a GPU process belongs to: process -> cgroup -> pod UID -> pod name.

The kubelet puts every container in a cgroup whose path names the pod's UID and the container
id, in either cgroup driver's spelling::

    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c8b8f0e_7a49_4b1c_9a31_2d0f1d0c5e11.slice/cri-containerd-<64 hex>.scope
    11:memory:/kubepods/burstable/pod1c8b8f0e-7a49-4b1c-9a31-2d0f1d0c5e11/<64 hex>

and names each pod's log directory ``/var/log/pods/<namespace>_<pod>_<uid>``, which gives the
UID a name without any API call (mount ``/var/log/pods`` read-only into the DaemonSet).

>>> parse_cgroup("0::/kubepods.slice/kubepods-pod1c8b8f0e_7a49_4b1c_9a31_2d0f1d0c5e11.slice/"
...              "cri-containerd-" + "ab" * 32 + ".scope")
('1c8b8f0e-7a49-4b1c-9a31-2d0f1d0c5e11', 'abababababab')
>>> parse_cgroup("0::/user.slice/user-0.slice/session-1.scope") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER = re.compile(r"(?:cri-containerd-|crio-|docker-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class PodRef:
    uid: str
    namespace: str = ""
    name: str = ""
    container_id: str = ""


def parse_cgroup(text: str) -> tuple[str, str] | None:
    """(pod UID, short container id) from a ``/proc/<pid>/cgroup`` text, or None outside pods."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        pod = _POD.search(path)
        if pod is None:
            continue
        last = path.rstrip("/").rsplit("/", 1)[-1]
        container = _CONTAINER.search(last)
        return pod.group(1).replace("_", "-"), container.group(1)[:12] if container else ""
    return None


def pods_from_log_dirs(root: Path) -> dict[str, tuple[str, str]]:
    """pod UID -> (namespace, name), from the kubelet's ``<namespace>_<name>_<uid>`` dirs.

    Namespaces and pod names cannot contain "_", so the split is unambiguous.
    """
    out: dict[str, tuple[str, str]] = {}
    if not root.is_dir():
        return out
    for d in root.iterdir():
        parts = d.name.split("_")
        if len(parts) == 3:
            out[parts[2]] = (parts[0], parts[1])
    return out


class PodResolver:
    """Maps process ids to pods on this node (``proc_root`` is the host's /proc)."""

    def __init__(
        self, proc_root: Path = Path("/proc"), pods_root: Path = Path("/var/log/pods")
    ) -> None:
        self.proc_root = proc_root
        self.pods_root = pods_root
        self._names: dict[str, tuple[str, str]] = {}

    def for_pid(self, pid: int) -> PodRef | None:
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:  # gone already, or not visible from this pid namespace
            return None
        parsed = parse_cgroup(text)
        if parsed is None:
            return None
        uid, container = parsed
        if uid not in self._names:
            self._names = pods_from_log_dirs(self.pods_root)  # a new pod: rescan once
        namespace, name = self._names.get(uid, ("", ""))
        return PodRef(uid, namespace, name, container)
