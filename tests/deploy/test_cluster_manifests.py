"""deploy/k8s as a cluster would take it (issue 21), checked statically: no cluster here.

Every overlay is rendered (tests/support/k8s_manifests.py); every custom resource is validated
against the operators' real CRD schemas (tests/support/k8s_crds.py: Strimzi 1.2.0, Altinity 0.25.6,
cert-manager 1.15.0); the Pod Security level of every pod spec is checked against its
namespace's enforce label — Headwater's Deployments and Job, the ClickHouse and Keeper pod
templates, and the pods Strimzi makes, modelled from its restricted pod-security provider
(pod_security.py); and the NetworkPolicies, ours plus the one Strimzi generates from the
listeners, are simulated for every flow the application needs and for flows that must stay
blocked (netpol_sim.py).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from clickhouse_connect.driver.httpclient import HttpClient
from netpol_sim import Cluster, Endpoint
from pod_security import level_of, violations
from support.k8s_crds import CRD_DIR, OPERATOR_VERSIONS, cel_rule_count, crd_problems, crds
from support.k8s_manifests import (
    _CORE_GROUPS,
    K8S,
    K8S_VERSION,
    OVERLAYS,
    SECRETS_SCRIPT,
    all_containers,
    of_kind,
    one,
    render,
    rendered,
    script_secrets,
    secret_keys,
    split_image,
)
from support.tools import kubectl

from conftest import REPO
from headwater.stream_processors import faust_config

NAMESPACE = "headwater"
STRIMZI = K8S / "operators" / "strimzi"
README = (REPO / "deploy" / "README.md").read_text()
# Strimzi 1.2.0 runs Apache Kafka 4.2.x and 4.3.x (its release notes); 4.0 needs 0.46-0.50
_STRIMZI_KAFKA = re.compile(r"^4\.[23]\.\d+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def custom_resources(docs: tuple[dict, ...]) -> list[dict]:
    return [d for d in docs if d["apiVersion"] not in _CORE_GROUPS]


# -- rendering and CRD schemas --------------------------------------------------------------


def test_the_crds_are_the_pinned_operator_releases() -> None:
    assert {p.name for p in CRD_DIR.iterdir() if p.is_dir()} == set(OPERATOR_VERSIONS)
    kinds = {k for _, k in crds()}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ClickHouseInstallation",
            "ClickHouseKeeperInstallation", "Certificate", "Issuer"} <= kinds
    assert {v for v, k in crds() if k == "Kafka"} == {"kafka.strimzi.io/v1"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_validates_against_its_crd(overlay: str) -> None:
    custom = custom_resources(rendered(overlay))
    assert len(custom) >= 14
    assert [p for d in custom for p in crd_problems(d)] == []
    kafka = one(rendered(overlay), "Kafka", "headwater")
    assert _STRIMZI_KAFKA.match(kafka["spec"]["kafka"]["version"]), kafka["spec"]["kafka"]
    assert "metadataVersion" not in kafka["spec"]["kafka"], "left to the version's default"


def test_the_crd_check_refuses_what_the_api_server_would() -> None:
    kafka = copy.deepcopy(one(rendered("base"), "Kafka", "headwater"))
    old = {**kafka, "apiVersion": "kafka.strimzi.io/v1beta2"}
    assert "is not served" in crd_problems(old)[0]
    kafka["spec"]["kafka"]["listeners"][0]["networkPolicyPeer"] = []
    kafka["spec"]["kafka"]["listeners"][0]["type"] = "internel"
    del kafka["spec"]["kafka"]["listeners"][0]["tls"]
    found = "\n".join(crd_problems(kafka))
    assert "unknown field networkPolicyPeer" in found
    assert "'internel' is not one of" in found
    assert "'tls' is a required property" in found
    user = copy.deepcopy(one(rendered("base"), "KafkaUser", "headwater-trainer-default"))
    user["spec"]["authentication"]["validityDays"] = 30  # a CEL rule of the KafkaUser CRD
    assert any("can be configured only with 'type: tls'" in p for p in crd_problems(user))
    assert cel_rule_count() >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_operator_templates_validate_strictly(overlay: str) -> None:
    docs = rendered(overlay)
    for d in docs:
        if d["apiVersion"] in _CORE_GROUPS:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    for chi in of_kind(docs, "ClickHouseInstallation") + of_kind(
            docs, "ClickHouseKeeperInstallation"):
        for pt in chi["spec"]["templates"]["podTemplates"]:
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "x"}, "spec": pt["spec"]}, K8S_VERSION, strict=True)
    # the Strimzi operator's own kustomization: its namespace and its Deployment patch
    for f in ("namespace.yaml",):
        kubernetes_validate.validate(yaml.safe_load((STRIMZI / f).read_text()), K8S_VERSION,
                                     strict=True)


# -- Pod Security ---------------------------------------------------------------------------


def strimzi_provider() -> str:
    """STRIMZI_POD_SECURITY_PROVIDER_CLASS of the Cluster Operator (deploy/k8s/operators)."""
    patch = yaml.safe_load((STRIMZI / "operator-env.yaml").read_text())
    (c,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    return env.get("STRIMZI_POD_SECURITY_PROVIDER_CLASS", "baseline")


def _strimzi_pod(template: dict, container: str, template_key: str, provider: str,
                 persistent: bool) -> dict:
    """The pod Strimzi makes: its provider's security contexts unless the CR's template sets
    them (Strimzi's Baseline provider sets only fsGroup 0 for persistent storage; Restricted
    adds the restricted container context), with the volume types it uses."""
    pod_sc = template.get("pod", {}).get("securityContext")
    if pod_sc is None:
        pod_sc = {"fsGroup": 0} if persistent else {}
    c_sc = template.get(template_key, {}).get("securityContext")
    if c_sc is None:
        c_sc = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}} \
            if provider in ("restricted", "io.strimzi.plugin.security.profiles.impl."
                                          "RestrictedPodSecurityProvider") else {}
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}] if persistent \
        else []
    volumes += [{"name": "tmp", "emptyDir": {}}, {"name": "certs", "secret": {"secretName": "x"}},
                {"name": "config", "configMap": {"name": "x"}},
                {"name": "token", "projected": {"sources": []}}]
    return {"securityContext": pod_sc, "volumes": volumes,
            "containers": [{"name": container, "image": "strimzi", "securityContext": c_sc}]}


def pod_specs(docs: tuple[dict, ...], provider: str | None = None) -> dict[str, dict]:
    """Every pod spec the overlay leads to: Headwater workloads, Altinity pod templates (the
    operator adds ConfigMap and PVC volumes, no security context), Strimzi's pods."""
    provider = provider or strimzi_provider()
    specs = {}
    for d in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        specs[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]["spec"]
    for chi in of_kind(docs, "ClickHouseInstallation") + of_kind(
            docs, "ClickHouseKeeperInstallation"):
        for pt in chi["spec"]["templates"]["podTemplates"]:
            spec = copy.deepcopy(pt["spec"])
            spec.setdefault("volumes", []).extend([
                {"name": "config", "configMap": {"name": "x"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "x"}}])
            specs[f"{chi['kind']}/{chi['metadata']['name']}/{pt['name']}"] = spec
    kafka = one(docs, "Kafka", "headwater")
    for pool in of_kind(docs, "KafkaNodePool"):
        template = pool["spec"].get("template") or kafka["spec"]["kafka"].get("template", {})
        specs[f"KafkaNodePool/{pool['metadata']['name']} (Strimzi pod)"] = _strimzi_pod(
            template, "kafka", "kafkaContainer", provider, True)
    eo = kafka["spec"]["entityOperator"]
    for name, key in (("topic-operator", "topicOperatorContainer"),
                      ("user-operator", "userOperatorContainer")):
        specs[f"Kafka/headwater entity operator {name} (Strimzi pod)"] = _strimzi_pod(
            eo.get("template", {}), name, key, provider, False)
    return specs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_its_namespaces_pod_security_level(overlay: str) -> None:
    docs = rendered(overlay)
    labels = one(docs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    specs = pod_specs(docs)
    assert len(specs) == 9, sorted(specs)
    problems = {name: violations(spec, "restricted") for name, spec in specs.items()}
    assert {k: v for k, v in problems.items() if v} == {}
    # ClickHouse and Keeper run as uid 101 from the start (the image's own user)
    for name, spec in specs.items():
        if "ClickHouse" in name:
            assert spec["securityContext"]["runAsUser"] == 101
            assert spec["securityContext"]["fsGroup"] == 101


def test_pod_security_check_catches_the_old_data_tier() -> None:
    docs = tuple(copy.deepcopy(d) for d in rendered("base"))
    chi = one(docs, "ClickHouseInstallation", "headwater")
    spec = chi["spec"]["templates"]["podTemplates"][0]["spec"]
    del spec["securityContext"], spec["containers"][0]["securityContext"]
    assert level_of(spec) == "baseline"
    assert any("runAsNonRoot" in v for v in violations(spec, "restricted"))
    # Strimzi's default (Baseline) provider: its pods fail `restricted`
    baseline = pod_specs(rendered("base"), provider="baseline")
    assert level_of(baseline["KafkaNodePool/brokers (Strimzi pod)"]) == "baseline"
    spec["hostNetwork"] = True
    assert level_of(spec) == "privileged"


def test_strimzi_operator_uses_the_restricted_provider_and_watches_headwater() -> None:
    k = yaml.safe_load((STRIMZI / "kustomization.yaml").read_text())
    (url,) = [r for r in k["resources"] if r.startswith("https://")]
    assert url == ("https://github.com/strimzi/strimzi-kafka-operator/releases/download/"
                   "1.2.0/strimzi-cluster-operator-1.2.0.yaml")
    assert strimzi_provider() == "restricted"
    patch = yaml.safe_load((STRIMZI / "operator-env.yaml").read_text())
    env = {e["name"]: e for e in patch["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRIMZI_NAMESPACE"] == {"name": "STRIMZI_NAMESPACE", "value": NAMESPACE,
                                        "valueFrom": None}  # replaces the upstream fieldRef
    ns = yaml.safe_load((STRIMZI / "namespace.yaml").read_text())
    assert ns["metadata"]["name"] == k["namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # the watched namespace binds the three ClusterRoles to the operator's ServiceAccount
    for overlay in OVERLAYS:
        bindings = [b for b in of_kind(rendered(overlay), "RoleBinding")
                    if b["subjects"][0]["name"] == "strimzi-cluster-operator"]
        assert {b["roleRef"]["name"] for b in bindings} == {
            "strimzi-cluster-operator-namespaced", "strimzi-cluster-operator-watched",
            "strimzi-entity-operator"}
        assert {s["namespace"] for b in bindings for s in b["subjects"]} == {k["namespace"]}


# -- NetworkPolicies ------------------------------------------------------------------------

_CLUSTER_CIDR = "10.244.0.0/16"
TRAINER_NS = "ml-training"
OTHER_NS = "analytics"


def strimzi_network_policy(kafka: dict) -> dict:
    """The NetworkPolicy Strimzi generates for the brokers: per listener, its port from its
    networkPolicyPeers (none: from anywhere); replication and control plane from Kafka and
    the entity operator."""
    name = kafka["metadata"]["name"]
    internal = [{"podSelector": {"matchLabels": {"strimzi.io/cluster": name,
                                                 "strimzi.io/kind": "Kafka"}}},
                {"podSelector": {"matchLabels": {"strimzi.io/name": f"{name}-entity-operator"}}}]
    rules = [{"ports": [{"port": 9090, "protocol": "TCP"}], "from": internal[:1]},
             {"ports": [{"port": 9091, "protocol": "TCP"}], "from": internal}]
    for lst in kafka["spec"]["kafka"]["listeners"]:
        rule: dict = {"ports": [{"port": lst["port"], "protocol": "TCP"}]}
        if lst.get("networkPolicyPeers"):
            rule["from"] = lst["networkPolicyPeers"]
        rules.append(rule)
    return {"metadata": {"name": f"{name}-network-policy-kafka",
                         "namespace": kafka["metadata"]["namespace"]},
            "spec": {"podSelector": {"matchLabels": {"strimzi.io/cluster": name,
                                                     "strimzi.io/kind": "Kafka",
                                                     "strimzi.io/name": f"{name}-kafka"}},
                     "policyTypes": ["Ingress"], "ingress": rules}}


def endpoints(docs: tuple[dict, ...]) -> dict[str, Endpoint]:
    """The pods of the application (labels from the rendered templates and the labels the
    operators put on theirs), trainers and clients in and outside the cluster."""
    kafka = one(docs, "Kafka", "headwater")
    ips = (f"10.244.0.{i}" for i in range(2, 250))

    def workload(kind: str, name: str) -> Endpoint:
        d = one(docs, kind, name)
        ports = {p["containerPort"]: p.get("name") for c in d["spec"]["template"]["spec"][
            "containers"] for p in c.get("ports", [])}
        return Endpoint(name, next(ips), NAMESPACE, d["spec"]["template"]["metadata"]["labels"],
                        ports)

    chi = one(docs, "ClickHouseInstallation", "headwater")
    settings = chi["spec"]["configuration"]["settings"]
    ch_ports = {8123: "http", 9000: "tcp", 9009: "interserver", int(settings["https_port"]):
                "https"}
    kafka_ports = {9090: None, 9091: None} | {
        lst["port"]: None for lst in kafka["spec"]["kafka"]["listeners"]}
    (job,) = of_kind(docs, "Job")
    trainer = {"app": "trainer", "headwater/kafka-producer": "true"}
    return {
        "processor": workload("Deployment", "headwater-processor"),
        "query": workload("Deployment", "headwater-query"),
        "migrate": workload("Job", job["metadata"]["name"]),
        "kafka": Endpoint("broker", next(ips), NAMESPACE, {
            "strimzi.io/cluster": "headwater", "strimzi.io/kind": "Kafka",
            "strimzi.io/name": "headwater-kafka", "strimzi.io/pool-name": "brokers",
            "strimzi.io/broker-role": "true"}, kafka_ports),
        "clickhouse": Endpoint("clickhouse", next(ips), NAMESPACE, {
            "clickhouse.altinity.com/chi": "headwater", "clickhouse.altinity.com/app": "chop",
            "clickhouse.altinity.com/cluster": "headwater"}, ch_ports),
        "keeper": Endpoint("keeper", next(ips), NAMESPACE, {
            "clickhouse-keeper.altinity.com/chk": "headwater-keeper"}, {2181: None, 9444: None}),
        "clickhouse-operator": Endpoint("operator", next(ips), "kube-system",
                                        {"app": "clickhouse-operator"}),
        "trainer": Endpoint("trainer", next(ips), TRAINER_NS, trainer),
        "trainer-in-namespace": Endpoint("trainer2", next(ips), NAMESPACE, trainer),
        "unlabelled-pod-in-trainer-ns": Endpoint("notebook", next(ips), TRAINER_NS,
                                                 {"app": "notebook"}),
        "producer-label-in-other-ns": Endpoint("impostor", next(ips), OTHER_NS, trainer),
        "client": Endpoint("dashboard", next(ips), OTHER_NS, {"app": "dashboard"}),
        "prometheus": Endpoint("prometheus", next(ips), "monitoring",
                               {"app.kubernetes.io/name": "prometheus"}),
        "unlabelled-pod-in-headwater": Endpoint("debug", next(ips), NAMESPACE, {"app": "debug"}),
        "external-trainer": Endpoint("external trainer", "203.0.113.10"),
        "external-stranger": Endpoint("stranger", "198.51.100.7"),
    }


def cluster(docs: tuple[dict, ...]) -> Cluster:
    policies = [*of_kind(docs, "NetworkPolicy"),
                strimzi_network_policy(one(docs, "Kafka", "headwater"))]
    return Cluster({NAMESPACE: {}, TRAINER_NS: {"headwater/trainers": "true"}, OTHER_NS: {},
                    "kube-system": {}, "monitoring": {}}, policies)


def _port(docs: tuple[dict, ...], what: str) -> int:
    config = one(docs, "ConfigMap", "headwater-config")["data"]
    if what == "kafka":
        return int(config["HEADWATER_KAFKA_BOOTSTRAP"].rpartition(":")[2])
    if what == "metrics":  # the processor's metrics port (the query pods' is checked equal)
        (c,) = one(docs, "Deployment", "headwater-processor")["spec"]["template"]["spec"][
            "containers"]
        return int({e["name"]: e.get("value") for e in c["env"]}["HEADWATER_METRICS_PORT"])
    if what == "clickhouse":
        dsn = _dsn(docs)
        return int(re.match(r"^https://[^@]+@[^:/]+:(\d+)", dsn).group(1))
    raise KeyError(what)


def _dsn(docs: tuple[dict, ...]) -> str:
    (c,) = one(docs, "Deployment", "headwater-processor")["spec"]["template"]["spec"][
        "containers"]
    return {e["name"]: e.get("value") for e in c["env"]}["HEADWATER_DSN"]


# (source, destination, port: a number or "kafka" / "clickhouse" as the pods dial it,
# "metrics" as HEADWATER_METRICS_PORT says)
NEEDED = [
    ("trainer", "kafka", "kafka"), ("trainer-in-namespace", "kafka", "kafka"),
    ("processor", "kafka", "kafka"), ("processor", "clickhouse", "clickhouse"),
    ("query", "kafka", "kafka"), ("query", "clickhouse", "clickhouse"),
    ("migrate", "clickhouse", "clickhouse"),
    ("client", "query", 50051), ("trainer", "query", 50051),
    ("clickhouse", "keeper", 2181), ("keeper", "keeper", 9444),
    ("clickhouse", "clickhouse", 9000), ("clickhouse", "clickhouse", 9009),
    ("clickhouse-operator", "clickhouse", 8123),
    ("prometheus", "processor", "metrics"), ("prometheus", "query", "metrics"),
]
BLOCKED = [
    ("trainer", "clickhouse", "clickhouse"), ("trainer", "keeper", 2181),
    ("trainer", "kafka", 9092),  # no plaintext listener any more
    ("unlabelled-pod-in-trainer-ns", "kafka", "kafka"),
    ("producer-label-in-other-ns", "kafka", "kafka"),
    ("unlabelled-pod-in-headwater", "kafka", "kafka"),
    ("unlabelled-pod-in-headwater", "clickhouse", "clickhouse"),
    ("client", "clickhouse", "clickhouse"), ("client", "kafka", "kafka"),
    ("processor", "clickhouse", 8123), ("query", "clickhouse", 8123),  # plaintext HTTP
    ("query", "keeper", 2181), ("processor", "keeper", 2181),
    ("query", "clickhouse", 9000),
    ("external-trainer", "kafka", "kafka"), ("external-stranger", "kafka", 9094),
    ("external-trainer", "clickhouse", "clickhouse"),
    # metrics: plain HTTP without a token, for Prometheus only
    ("client", "query", "metrics"), ("trainer", "query", "metrics"),
    ("unlabelled-pod-in-headwater", "processor", "metrics"),
    ("trainer-in-namespace", "query", "metrics"),
    ("prometheus", "clickhouse", "clickhouse"), ("prometheus", "kafka", "kafka"),
]
EXTERNAL = ("external-trainer", "kafka", 9094)  # prod only


def flow_allowed(docs: tuple[dict, ...], flow: tuple) -> bool:
    src, dst, port = flow
    pods = endpoints(docs)
    number = port if isinstance(port, int) else _port(docs, port)
    return cluster(docs).allowed(pods[src], pods[dst], number)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("flow", NEEDED, ids=lambda f: f"{f[0]}->{f[1]}:{f[2]}")
def test_network_policies_allow_every_flow_the_app_needs(overlay: str, flow: tuple) -> None:
    assert flow_allowed(rendered(overlay), flow), f"{overlay}: {flow} is blocked"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("flow", BLOCKED, ids=lambda f: f"{f[0]}->{f[1]}:{f[2]}")
def test_network_policies_block_what_must_stay_out(overlay: str, flow: tuple) -> None:
    assert not flow_allowed(rendered(overlay), flow), f"{overlay}: {flow} is allowed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_external_trainers_reach_kafka_in_prod_only(overlay: str) -> None:
    assert flow_allowed(rendered(overlay), EXTERNAL) == (overlay == "overlays/prod")


def test_the_simulation_notices_a_policy_change() -> None:
    docs = tuple(copy.deepcopy(d) for d in rendered("base"))
    kafka = one(docs, "Kafka", "headwater")
    kafka["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"].pop()  # trainers' namespaces
    assert not flow_allowed(docs, ("trainer", "kafka", "kafka"))
    assert flow_allowed(docs, ("processor", "kafka", "kafka"))
    del kafka["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]  # no peers: anyone
    assert flow_allowed(docs, ("client", "kafka", "kafka"))
    docs = tuple(copy.deepcopy(d) for d in rendered("base"))
    docs = tuple(d for d in docs if d["metadata"]["name"] != "clickhouse-ingress")
    assert flow_allowed(docs, ("trainer", "clickhouse", "clickhouse")) is False  # default deny
    assert flow_allowed(docs, ("processor", "clickhouse", "clickhouse")) is False


# -- trainers, TLS, Secrets, replicas, migrations, images ------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_users_are_write_only_scram_on_a_tls_listener(overlay: str) -> None:
    docs = rendered(overlay)
    topic = one(docs, "KafkaTopic", "headwater-events")["spec"]["topicName"]
    trainers = [u for u in of_kind(docs, "KafkaUser")
                if u["metadata"]["name"].startswith("headwater-trainer-")]
    assert trainers
    for user in trainers:
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        acls = user["spec"]["authorization"]["acls"]
        assert [(a["resource"]["type"], a["resource"]["name"], a["operations"]) for a in acls] \
            == [("topic", topic, ["Write"])], "write-only: no Read, no group, no other topic"
        assert acls[0]["resource"].get("patternType", "literal") == "literal"
        assert "headwater/trainer-group" in user["metadata"]["labels"]
    kafka = one(docs, "Kafka", "headwater")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512"
               for lst in listeners), "every listener: TLS + SCRAM-SHA-512"
    types = {lst["type"] for lst in listeners}
    assert types == ({"internal", "loadbalancer"} if overlay == "overlays/prod" else
                     {"internal"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_everywhere_with_certificates_from_cert_manager(overlay: str) -> None:
    docs = rendered(overlay)
    config = one(docs, "ConfigMap", "headwater-config")["data"]
    kafka = one(docs, "Kafka", "headwater")
    host, _, port = config["HEADWATER_KAFKA_BOOTSTRAP"].partition(":")
    (internal,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port)]
    cert_ref = internal["configuration"]["brokerCertChainAndKey"]
    kafka_cert = [c for c in of_kind(docs, "Certificate")
                  if c["spec"]["secretName"] == cert_ref["secretName"]]
    assert len(kafka_cert) == 1
    names = kafka_cert[0]["spec"]["dnsNames"]
    assert host in names and f"*.{host.replace('-bootstrap', '-brokers')}.{NAMESPACE}.svc" \
        in names, "the bootstrap Service and every broker as Strimzi advertises them"
    assert {cert_ref["certificate"], cert_ref["key"]} <= secret_keys(docs, cert_ref["secretName"])
    # ClickHouse: the DSN's scheme, host and port are the HTTPS port of a certificate's names
    chi = one(docs, "ClickHouseInstallation", "headwater")
    settings = chi["spec"]["configuration"]["settings"]
    pod = chi["spec"]["templates"]["podTemplates"][0]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert settings["openSSL/server/certificateFile"] == f"{mount['mountPath']}/tls.crt"
    assert settings["openSSL/server/privateKeyFile"] == f"{mount['mountPath']}/tls.key"
    ch_cert = [c for c in of_kind(docs, "Certificate")
               if c["spec"]["secretName"] == vol["secret"]["secretName"]]
    assert len(ch_cert) == 1
    for d in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}

            def ca_file(path: str, mounts: dict = mounts) -> str:  # Secret of a CA path
                directory, _, file = path.rpartition("/")
                secret = mounts[directory]["secret"]
                assert secret["items"] == [{"key": "ca.crt", "path": file}], \
                    "only the CA reaches the client, not the server's key"
                return secret["secretName"]

            dsn = re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m.group(1)) or "x",
                         env["HEADWATER_DSN"])
            m = re.match(r"^https://headwater:[^@]+@([\w.-]+):(\d+)/\?ca_cert=(\S+)$", dsn)
            assert m, dsn
            assert m.group(1) in ch_cert[0]["spec"]["dnsNames"]
            assert int(m.group(2)) == int(settings["https_port"]) == 8443
            assert ca_file(m.group(3)) == ch_cert[0]["spec"]["secretName"]
            assert env["SSL_CERT_FILE"] == m.group(3), "the probe's /ping uses the same CA"
            if "HEADWATER_KAFKA_CONFIG" in env:
                kc = json.loads(env["HEADWATER_KAFKA_CONFIG"])
                assert kc["security.protocol"] == "SASL_SSL"
                assert kc["sasl.mechanisms"] == "SCRAM-SHA-512"
                assert ca_file(kc["ssl.ca.location"]) == cert_ref["secretName"]
                # the faust runner's consumer takes every key (the CA file is the pod's)
                assert set(kc) <= set(faust_config.SUPPORTED), set(kc) - set(
                    faust_config.SUPPORTED)


def test_clickhouse_connect_reads_the_dsn_as_https_with_its_ca(monkeypatch) -> None:
    """The driver's own DSN parsing: https on 8443 (it picks TLS by port), ca_cert passed on."""
    import clickhouse_connect.driver as driver

    seen = {}

    def fake_init(self, interface, host, port, username, password, database, *args, **kw):
        seen.update(interface=interface, host=host, port=port, ca_cert=kw.get("ca_cert"))
        raise RuntimeError("stop before connecting")

    monkeypatch.setattr(HttpClient, "__init__", fake_init)
    dsn = re.sub(r"\$\((\w+)\)", lambda m: {"SSL_CERT_FILE": "/etc/headwater/clickhouse-ca/ca.crt"}
                 .get(m.group(1), "pw"), _dsn(rendered("overlays/prod")))
    with pytest.raises(RuntimeError, match="stop before connecting"):
        driver.create_client(dsn=dsn)
    assert seen == {"interface": "https", "host": "clickhouse-headwater", "port": 8443,
                    "ca_cert": "/etc/headwater/clickhouse-ca/ca.crt"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_rendered_and_every_secret_used_is_made_once(overlay: str) -> None:
    docs = rendered(overlay)
    assert of_kind(docs, "Secret") == []
    used: set[tuple[str, str]] = set()
    for c in all_containers(list(docs)):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                used.add((ref["name"], ref["key"]))
    chi = one(docs, "ClickHouseInstallation", "headwater")
    for key, value in chi["spec"]["configuration"]["users"].items():
        if key.endswith("/k8s_secret_password"):
            used.add(tuple(value.split("/", 1)))
    for d in docs:
        for v in (d.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])):
            if "secret" in v:
                for item in v["secret"].get("items", []):
                    used.add((v["secret"]["secretName"], item["key"]))
    assert {"headwater-clickhouse", "headwater-processor", "headwater-query",
            "headwater-kafka-tls", "headwater-clickhouse-tls"} <= {n for n, _ in used}
    missing = sorted((n, k) for n, k in used if k not in (secret_keys(docs, n) or set()))
    assert missing == []


def test_secrets_script_creates_only_what_is_missing() -> None:
    text = SECRETS_SCRIPT.read_text()
    assert set(script_secrets()) == {"headwater-clickhouse", "headwater-query-tokens"}
    assert script_secrets()["headwater-clickhouse"] == {"password", "auditor-password"}
    body = text[text.index("ensure_secret() {"):]
    assert body.index('get secret "$name"') < body.index("create secret generic"), \
        "an existing Secret is left as it is"
    assert "openssl rand -hex" in text, "URL-safe random passwords (they go into the DSN)"
    assert "change-me" not in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(SECRETS_SCRIPT)]).returncode == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_owns_the_replicas_of_its_deployment(overlay: str) -> None:
    docs = rendered(overlay)
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpas
    for hpa in hpas:
        target = one(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], \
            f"{overlay}: Deployment/{target['metadata']['name']} sets replicas under an HPA"


def _migrate_job(docs: tuple[dict, ...]) -> dict:
    (job,) = of_kind(docs, "Job")
    return job


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migrate_job_is_named_after_the_image_tag(overlay: str) -> None:
    job = _migrate_job(rendered(overlay))
    (c,) = job["spec"]["template"]["spec"]["containers"]
    _, tag, _ = split_image(c["image"])
    name = job["metadata"]["name"]
    assert name == f"headwater-migrate-{tag}"
    assert re.match(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$", name) and len(name) <= 63, \
        "a Job name and its pods' job-name label value"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_a_new_image_tag_is_a_new_migrate_job(tmp_path: Path) -> None:
    """Re-applying with a new tag creates a new Job (no delete needed); checked with the
    renderer and with kubectl kustomize."""
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("operators"))
    prod = tmp_path / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    prod.write_text(prod.read_text().replace("newTag: 0.1.0", "newTag: 0.2.0"))
    names = {_migrate_job(tuple(render(prod.parent)))["metadata"]["name"]}
    out = subprocess.run([kubectl(), "kustomize", str(prod.parent)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names.add(_migrate_job(tuple(d for d in yaml.safe_load_all(out.stdout) if d))[
        "metadata"]["name"])
    assert names == {"headwater-migrate-0.2.0"}
    assert _migrate_job(rendered("overlays/prod"))["metadata"]["name"] == \
        "headwater-migrate-0.1.0"


def test_prod_pins_every_image_by_digest_and_no_overlay_floats() -> None:
    for overlay in OVERLAYS:
        images = [c["image"] for c in all_containers(list(rendered(overlay)))]
        assert len(images) == 5  # processor, query, migrate, ClickHouse, Keeper
        for image in images:
            name, tag, digest = split_image(image)
            assert tag and tag != "latest" and re.match(r"^\d+\.\d+\.\d+", tag), image
            if overlay == "overlays/prod":
                assert digest and _DIGEST.match(digest), image
                assert "/" in name or name.startswith("clickhouse"), "a registry, not a bare name"
    k = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    assert all(_DIGEST.match(rule["digest"]) for rule in k["images"])


def test_readme_pins_the_operators_and_installs_them_in_order() -> None:
    install = README[README.index("## Install"):]
    install = install[:install.index("\n## ", 5)]
    steps = [
        "https://github.com/cert-manager/cert-manager/releases/download/v1.15.0/cert-manager.yaml",
        "https://raw.githubusercontent.com/Altinity/clickhouse-operator/release-0.25.6/deploy/"
        "operator/clickhouse-operator-install-bundle.yaml",
        "kubectl apply -k deploy/k8s/operators/strimzi",
        "kubectl apply -f deploy/k8s/base/namespace.yaml",
        "deploy/k8s/secrets.sh",
        "kubectl apply -k deploy/k8s/overlays/prod",
    ]
    at = [install.find(s) for s in steps]
    assert all(i >= 0 for i in at), [s for s, i in zip(steps, at, strict=True) if i < 0]
    assert at == sorted(at), "operators, namespaces, Secrets, then the overlay"
    urls = re.findall(r"https://\S+", install)
    assert urls and not [u for u in urls if "latest" in u or "master" in u], urls
    for version in ("1.2.0", "0.25.6", "1.15.0"):
        assert version in install


def test_readme_kafka_transport_example_matches_the_manifests() -> None:
    docs = rendered("overlays/prod")
    config = one(docs, "ConfigMap", "headwater-config")["data"]
    block = re.search(r"```python\n(.*?KafkaTransport\(.*?)```", README, re.S)
    assert block, "deploy/README.md has no KafkaTransport example"
    code = block.group(1)
    host, _, port = config["HEADWATER_KAFKA_BOOTSTRAP"].partition(":")
    assert f"{host}.{NAMESPACE}.svc:{port}" in code
    assert config["HEADWATER_KAFKA_TOPIC"] in code
    for needle in ('"security.protocol": "SASL_SSL"', '"sasl.mechanisms": "SCRAM-SHA-512"',
                   '"sasl.username": "headwater-trainer-default"', '"ssl.ca.location"'):
        assert needle in code, needle
    one(docs, "KafkaUser", "headwater-trainer-default")
    external = [x for x in one(docs, "Kafka", "headwater")["spec"]["kafka"]["listeners"]
                if x["type"] == "loadbalancer"]
    assert str(external[0]["port"]) in README and "headwater-cluster-ca-cert" in README
