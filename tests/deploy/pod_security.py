"""Pod Security Standards (Kubernetes, `latest`): the level a pod spec meets.

The checks of https://kubernetes.io/docs/concepts/security/pod-security-standards/ for the
`baseline` and `restricted` profiles, applied to a pod spec as the API server's Pod Security
admission would apply them to the pod. `violations(spec, level)` lists what breaks `level`;
`level_of(spec)` is the strictest level met ("restricted", "baseline" or "privileged").
"""

from __future__ import annotations

from typing import Any

LEVELS = ("privileged", "baseline", "restricted")
_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                  "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                 "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                 "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                 "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t",
                  "container_engine_t"}


def _containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", []),
            *spec.get("ephemeralContainers", [])]


def _baseline(spec: dict) -> list[str]:
    out = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field}: true")
    if spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "Unconfined":
        out.append("pod seccompProfile Unconfined")
    for s in spec.get("securityContext", {}).get("sysctls", []):
        if s["name"] not in _SAFE_SYSCTLS:
            out.append(f"unsafe sysctl {s['name']}")
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            out.append(f"volume {v['name']}: hostPath")
    contexts = [("pod", spec.get("securityContext", {}))]
    for c in _containers(spec):
        sc = c.get("securityContext", {})
        contexts.append((f"container {c['name']}", sc))
        if sc.get("privileged"):
            out.append(f"container {c['name']}: privileged")
        extra = set(sc.get("capabilities", {}).get("add", [])) - _BASELINE_CAPS
        if extra:
            out.append(f"container {c['name']}: adds capabilities {sorted(extra)}")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                out.append(f"container {c['name']}: hostPort {p['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"container {c['name']}: procMount {sc['procMount']}")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            out.append(f"container {c['name']}: seccompProfile Unconfined")
    for who, sc in contexts:
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            out.append(f"{who}: appArmorProfile Unconfined")
        se = sc.get("seLinuxOptions", {})
        if se.get("type", "") not in _SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{who}: seLinuxOptions {se}")
    return out


def _restricted(spec: dict) -> list[str]:
    out = []
    pod = spec.get("securityContext", {})
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds)}")
    if pod.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in _containers(spec):
        sc, name = c.get("securityContext", {}), f"container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{name}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is {seccomp or 'unset'}, not RuntimeDefault "
                       "or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities other than NET_BIND_SERVICE")
    return out


def violations(spec: dict[str, Any], level: str) -> list[str]:
    """What in `spec` breaks the Pod Security `level` (empty: it meets it)."""
    if level == "privileged":
        return []
    found = _baseline(spec)
    return found + _restricted(spec) if level == "restricted" else found


def level_of(spec: dict[str, Any]) -> str:
    """The strictest Pod Security level the spec meets."""
    for level in reversed(LEVELS):
        if not violations(spec, level):
            return level
    return "privileged"
