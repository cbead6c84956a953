"""NetworkPolicy (networking.k8s.io/v1) evaluated for one connection, offline.

A connection from `src` to `dst` on a TCP port is allowed when (1) `dst` listens on it,
(2) egress: no Egress policy of the source's namespace selects `src`, or one of them allows
the destination, and (3) ingress: no Ingress policy of the destination's namespace selects
`dst`, or one of them allows the source — the semantics of the Kubernetes documentation
(policies are additive allow-lists; an empty `from`/`to`/`ports` matches everything; a peer
with only podSelector means the policy's own namespace; ipBlock matches by address).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or a client outside the cluster (namespace None)."""
    name: str
    ip: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[int, str | None] = field(default_factory=dict)  # port -> name


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Cluster:
    def __init__(self, namespaces: dict[str, dict[str, str]], policies: list[dict]) -> None:
        self.namespaces = {n: {"kubernetes.io/metadata.name": n, **labels}
                           for n, labels in namespaces.items()}
        self.policies = policies

    def _peer_matches(self, peer: dict, policy_ns: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(other.ip)
            block = peer["ipBlock"]
            return ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(x) for x in block.get("except", []))
        if other.namespace is None:  # outside the cluster: only ipBlock peers match
            return False
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self.namespaces[other.namespace]):
                return False
        elif other.namespace != policy_ns:
            return False
        return "podSelector" not in peer or selector_matches(peer["podSelector"], other.labels)

    @staticmethod
    def _port_matches(rule_ports: list[dict] | None, dst: Endpoint, port: int) -> bool:
        if not rule_ports:
            return True
        for p in rule_ports:
            if p.get("protocol", "TCP") != "TCP":
                continue
            want = p.get("port")
            if want is None:
                return True
            if isinstance(want, str):
                if dst.ports.get(port) == want:
                    return True
            elif want <= port <= p.get("endPort", want):
                return True
        return False

    def _selected(self, direction: str, pod: Endpoint) -> list[dict]:
        out = []
        for pol in self.policies:
            spec = pol["spec"]
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec
                                                 else ["Ingress"])
            if direction in types and pol["metadata"]["namespace"] == pod.namespace and \
                    selector_matches(spec["podSelector"], pod.labels):
                out.append(pol)
        return out

    def allowed(self, src: Endpoint, dst: Endpoint, port: int) -> bool:
        if port not in dst.ports:
            return False
        if src.namespace is not None:
            egress = self._selected("Egress", src)
            if egress and not any(
                    self._port_matches(r.get("ports"), dst, port) and (
                        not r.get("to") or any(self._peer_matches(p, pol["metadata"][
                            "namespace"], dst) for p in r["to"]))
                    for pol in egress for r in pol["spec"].get("egress", [])):
                return False
        if dst.namespace is None:
            return True
        ingress = self._selected("Ingress", dst)
        return not ingress or any(
            self._port_matches(r.get("ports"), dst, port) and (
                not r.get("from") or any(self._peer_matches(p, pol["metadata"]["namespace"],
                                                             src) for p in r["from"]))
            for pol in ingress for r in pol["spec"].get("ingress", []))
