"""The Pod Security Standards' rules, as a table: what the API server's admission checks of a
namespace labelled ``pod-security.kubernetes.io/enforce: <level>`` refuse in a pod spec.

Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the
``baseline`` and ``restricted`` controls, policy version ``latest``). Each rule takes a pod
spec (a Deployment's ``spec.template.spec``) and returns what breaks it; ``restricted`` is
every ``baseline`` rule plus its own. Used by tests/test_deploy_overlays.py.

>>> pod = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
...        "capabilities": {"drop": ["ALL"]}}}], "securityContext": {"runAsNonRoot": True,
...        "seccompProfile": {"type": "RuntimeDefault"}}}
>>> violations(pod, "restricted")
[]
>>> pod["hostPID"] = True
>>> violations(pod, "restricted")
['host namespaces: hostPID']
>>> violations(pod, "privileged")
[]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Pod = dict[str, Any]
Rule = Callable[[Pod], list[str]]

BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                "persistentVolumeClaim", "projected", "secret"})
SECCOMP_CONFINED = frozenset({"RuntimeDefault", "Localhost"})


def containers(pod: Pod) -> Iterator[dict[str, Any]]:
    """Every container the rules apply to: regular, init and ephemeral."""
    for key in ("containers", "initContainers", "ephemeralContainers"):
        yield from pod.get(key) or []


def _contexts(pod: Pod) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, securityContext) of the pod and of each container."""
    yield "pod", pod.get("securityContext") or {}
    for c in containers(pod):
        yield c["name"], c.get("securityContext") or {}


def _host_namespaces(pod: Pod) -> list[str]:
    return [f"host namespaces: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]


def _privileged(pod: Pod) -> list[str]:
    return [f"privileged: {w}" for w, sc in _contexts(pod) if sc.get("privileged")]


def _host_process(pod: Pod) -> list[str]:
    return [f"hostProcess: {w}" for w, sc in _contexts(pod)
            if (sc.get("windowsOptions") or {}).get("hostProcess")]


def _host_path(pod: Pod) -> list[str]:
    return [f"hostPath volume: {v['name']}" for v in pod.get("volumes") or [] if "hostPath" in v]


def _host_ports(pod: Pod) -> list[str]:
    return [f"hostPort: {c['name']}" for c in containers(pod)
            for p in c.get("ports") or [] if p.get("hostPort")]


def _baseline_capabilities(pod: Pod) -> list[str]:
    return [f"capability added: {w} {cap}" for w, sc in _contexts(pod)
            for cap in (sc.get("capabilities") or {}).get("add") or []
            if cap not in BASELINE_CAPABILITIES]


def _apparmor(pod: Pod) -> list[str]:
    return [f"AppArmor unconfined: {w}" for w, sc in _contexts(pod)
            if (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") == "Unconfined"]


def _selinux(pod: Pod) -> list[str]:
    out = []
    for w, sc in _contexts(pod):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            out.append(f"SELinux options: {w}")
    return out


def _proc_mount(pod: Pod) -> list[str]:
    return [f"procMount: {w}" for w, sc in _contexts(pod)
            if sc.get("procMount", "Default") != "Default"]


def _seccomp_not_unconfined(pod: Pod) -> list[str]:
    return [f"seccomp Unconfined: {w}" for w, sc in _contexts(pod)
            if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"]


def _sysctls(pod: Pod) -> list[str]:
    return [f"unsafe sysctl: {s['name']}"
            for s in (pod.get("securityContext") or {}).get("sysctls") or []
            if s["name"] not in SAFE_SYSCTLS]


def _volume_types(pod: Pod) -> list[str]:
    return [f"volume type: {v['name']}" for v in pod.get("volumes") or []
            if not set(v) - {"name"} <= RESTRICTED_VOLUMES]


def _privilege_escalation(pod: Pod) -> list[str]:
    return [f"allowPrivilegeEscalation not false: {c['name']}" for c in containers(pod)
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]


def _non_root(pod: Pod) -> list[str]:
    # The pod's runAsNonRoot covers containers that leave it unset; none may set it false.
    pod_level = (pod.get("securityContext") or {}).get("runAsNonRoot")
    return [f"runAsNonRoot not true: {c['name']}" for c in containers(pod)
            if (c.get("securityContext") or {}).get("runAsNonRoot", pod_level) is not True]


def _non_root_user(pod: Pod) -> list[str]:
    return [f"runAsUser 0: {w}" for w, sc in _contexts(pod) if sc.get("runAsUser") == 0]


def _seccomp_confined(pod: Pod) -> list[str]:
    pod_level = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    return [f"seccompProfile not RuntimeDefault/Localhost: {c['name']}" for c in containers(pod)
            if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type", pod_level)
            not in SECCOMP_CONFINED]


def _restricted_capabilities(pod: Pod) -> list[str]:
    out = []
    for c in containers(pod):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"capabilities do not drop ALL: {c['name']}")
        out += [f"capability added: {c['name']} {a}" for a in caps.get("add") or []
                if a != "NET_BIND_SERVICE"]
    return out


BASELINE: dict[str, Rule] = {
    "host namespaces": _host_namespaces,
    "privileged containers": _privileged,
    "host process": _host_process,
    "hostPath volumes": _host_path,
    "host ports": _host_ports,
    "capabilities (baseline)": _baseline_capabilities,
    "AppArmor": _apparmor,
    "SELinux": _selinux,
    "/proc mount type": _proc_mount,
    "seccomp (baseline)": _seccomp_not_unconfined,
    "sysctls": _sysctls,
}
RESTRICTED: dict[str, Rule] = {
    **BASELINE,
    "volume types": _volume_types,
    "privilege escalation": _privilege_escalation,
    "running as non-root": _non_root,
    "running as non-root user": _non_root_user,
    "seccomp (restricted)": _seccomp_confined,
    "capabilities (restricted)": _restricted_capabilities,
}
LEVELS: dict[str, dict[str, Rule]] = {"privileged": {}, "baseline": BASELINE,
                                      "restricted": RESTRICTED}


def violations(pod: Pod, level: str) -> list[str]:
    """What in ``pod`` the Pod Security ``level`` refuses (empty: admitted)."""
    return sorted({v for rule in LEVELS[level].values() for v in rule(pod)})
