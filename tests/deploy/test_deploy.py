"""deploy/: the image and the Kubernetes manifests, checked offline.

The kustomize base and its overlays are rendered by a small renderer here (resources,
strategic-merge patches, images, namespace — the features the manifests use); where
`kubectl kustomize` output must equal ours (a missing kubectl fails, support.tools). Core kinds are
validated strictly with kubernetes-validate; the operators' custom resources against the
field lists of their CRDs (Strimzi v1beta2, Altinity clickhouse.altinity.com/v1,
cert-manager.io/v1); every name, port, env var and command is cross-checked with the CLI and
Settings; a gRPC server on a non-loopback address must get TLS and tokens from mounted Secret
files, and the TLS health probe is run against a real `headwater serve` with TLS and tokens.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml
from support.k8s_crds import crd_problems
from support.k8s_manifests import (
    _CORE_GROUPS,
    IMAGE,
    K8S,
    K8S_VERSION,
    OVERLAYS,
    _containers,
    initial_token_file,
    of_kind,
    one,
    rendered,
    secret_keys,
)
from support.tools import kubectl

from conftest import HEADWATER, REPO, free_port, run_headwater, stop, wait_for_port
from headwater.errors import ConfigError
from headwater.producers.transports.channel import host_of, is_loopback_host
from headwater.query_service.server.auth import parse_tokens
from headwater.query_service.server.probe import local_target, tls_server_name
from headwater.query_service.server.transport_security import check_exposure, server_security
from headwater.query_service.settings import Settings

# -- rendering and schema -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    assert sorted(rendered(overlay), key=key) == theirs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_strictly(overlay: str) -> None:
    docs = rendered(overlay)
    core = [d for d in docs if d["apiVersion"] in _CORE_GROUPS]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "Deployment",
                                          "Service", "HorizontalPodAutoscaler",
                                          "PodDisruptionBudget", "NetworkPolicy", "Job",
                                          "Role", "RoleBinding", "ServiceAccount"}
    for d in core:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {d["apiVersion"] for d in docs} - _CORE_GROUPS == {
        "kafka.strimzi.io/v1", "clickhouse.altinity.com/v1",
        "clickhouse-keeper.altinity.com/v1", "cert-manager.io/v1"}
    assert not of_kind(docs, "Secret"), "Secrets are created once (secrets.sh), never applied"


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(one(rendered("base"), "Deployment", "headwater-query"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# The operators' custom resources are validated against the CRDs themselves
# (tests/support/k8s_crds.py: ../shared/k8s-crds, Strimzi 1.2.0, Altinity 0.25.6, cert-manager
# 1.15.0): `crd_problems` lists every unknown field, type, enum or required-field error.
_KEY_USAGES = {"signing", "digital signature", "content commitment", "key encipherment",
               "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
               "decipher only", "any", "server auth", "client auth", "code signing",
               "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
               "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
_DEFAULT_TEMPLATES = {"hostTemplate", "podTemplate", "dataVolumeClaimTemplate",
                      "logVolumeClaimTemplate", "serviceTemplate", "clusterServiceTemplate",
                      "shardServiceTemplate", "replicaServiceTemplate", "volumeClaimTemplate"}
_ACL_OPERATIONS = {"Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction",
                   "AlterConfigs", "DescribeConfigs", "IdempotentWrite", "All"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_resources_use_only_their_crd_fields(overlay: str) -> None:
    docs = rendered(overlay)
    custom = [d for d in docs if d["apiVersion"] not in _CORE_GROUPS]
    assert {d["kind"] for d in custom} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser",
                                           "ClickHouseInstallation",
                                           "ClickHouseKeeperInstallation", "Certificate",
                                           "Issuer"}
    assert [p for d in custom for p in crd_problems(d)] == []
    pools = of_kind(docs, "KafkaNodePool")
    assert {r for p in pools for r in p["spec"]["roles"]} == {"controller", "broker"}
    for d in of_kind(docs, "KafkaNodePool") + of_kind(docs, "KafkaTopic") + of_kind(
            docs, "KafkaUser"):
        assert d["metadata"]["labels"]["strimzi.io/cluster"] == "headwater"
    for user in of_kind(docs, "KafkaUser"):
        for acl in user["spec"]["authorization"]["acls"]:
            assert set(acl["operations"]) <= _ACL_OPERATIONS
    topic = one(docs, "KafkaTopic", "headwater-events")
    assert topic["spec"]["replicas"] <= sum(
        p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    assert int(topic["spec"]["config"]["min.insync.replicas"]) <= topic["spec"]["replicas"]
    assert int(topic["spec"]["config"]["retention.ms"]) >= 24 * 3600 * 1000
    # Altinity: defaults.templates name templates that exist; pod, volume and service
    # templates hold real Kubernetes objects (validated strictly as such)
    for chi in of_kind(docs, "ClickHouseInstallation") + of_kind(
            docs, "ClickHouseKeeperInstallation"):
        t = chi["spec"]["templates"]
        defaults = chi["spec"]["defaults"]["templates"]
        assert set(defaults) <= _DEFAULT_TEMPLATES
        names = {x["name"] for group in t.values() for x in group}
        assert set(defaults.values()) <= names, (defaults, names)
        for pt in t.get("podTemplates", []):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod",
                                          "metadata": {"name": "x"}, "spec": pt["spec"]},
                                         K8S_VERSION, strict=True)
        for vt in t.get("volumeClaimTemplates", []):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                          "metadata": {"name": "x"}, "spec": vt["spec"]},
                                         K8S_VERSION, strict=True)
        for st in t.get("serviceTemplates", []):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service",
                                          "metadata": {"name": "x"}, "spec": st["spec"]},
                                         K8S_VERSION, strict=True)


def test_crd_field_lists_catch_an_unknown_field() -> None:
    topic = copy.deepcopy(one(rendered("base"), "KafkaTopic", "headwater-events"))
    topic["spec"]["partitionCount"] = 3
    assert crd_problems(topic) == [
        "KafkaTopic/headwater-events spec: unknown field partitionCount"]


# -- cross-checks with the CLI and Settings ------------------------------------------------


@cache
def cli_problem(args: tuple[str, ...]) -> str | None:
    """Why `headwater ARGS` would not start (unknown subcommand or option), or None."""
    r = run_headwater(*args, "--help", timeout=60)
    return None if r.returncode == 0 else (r.stderr or r.stdout).strip().splitlines()[-1]


@cache
def module_problem(module: str, args: tuple[str, ...]) -> str | None:
    """Why `python -m MODULE ARGS` would not start (its `--help` with ARGS fails), or None."""
    r = subprocess.run([sys.executable, "-m", module, *args, "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else (r.stderr or r.stdout).strip().splitlines()[-1]


def exec_problem(command: list[str]) -> str | None:
    """An exec probe must run the headwater CLI or a module of the installed package, with
    arguments it accepts."""
    if command[0] == "headwater":
        return cli_problem(tuple(command[1:]))
    if command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]) is not None:
        return module_problem(command[2], tuple(command[3:]))
    return f"exec command {command} is neither `headwater ...` nor an importable module"


def _headwater_containers(docs: tuple[dict, ...]) -> list[tuple[dict, dict]]:
    return [(d, c) for d in docs if d["kind"] in ("Deployment", "Job")
            for c in _containers(d) if c["image"].split(":")[0].endswith(IMAGE)]


def _env(docs: tuple[dict, ...], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it (ConfigMaps, then env with
    $(VAR) expansion); Secrets read as placeholder text."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                    e["value"])
        else:
            env[e["name"]] = f"secret-{e['name'].lower()}"
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_are_real_subcommands(overlay: str) -> None:
    containers = _headwater_containers(rendered(overlay))
    assert {c["args"][0] for _, c in containers} == {"process", "query-service", "migrate"}
    for d, c in containers:
        assert "command" not in c, "the image's ENTRYPOINT is `headwater`; set args only"
        assert cli_problem(tuple(c["args"])) is None, (d["metadata"]["name"], c["args"])
        for probe in ("readinessProbe", "livenessProbe"):
            if "exec" in c.get(probe, {}):
                assert exec_problem(c[probe]["exec"]["command"]) is None


def test_a_manifest_naming_a_missing_subcommand_fails_the_check() -> None:
    assert "No such command 'procss'" in (cli_problem(("procss",)) or "")
    assert "No such option" in (cli_problem(("process", "--partitoins", "3")) or "")
    assert exec_problem(["python", "-m", "headwater.query_service.no_such_probe"])
    assert "invalid choice: 'grcp'" in (
        exec_problem(["python", "-m", "headwater.query_service.server.probe", "grcp"]) or "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_vars_are_settings_and_parse(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    fields = set(Settings.model_fields)
    for cm in of_kind(docs, "ConfigMap"):
        for key in cm["data"]:
            assert key.startswith("HEADWATER_") and key[10:].lower() in fields, key
    for _, c in _headwater_containers(docs):
        values = " ".join(e.get("value", "") for e in c.get("env", []))
        for e in c.get("env", []):
            if e["name"].startswith("HEADWATER_"):
                assert e["name"][10:].lower() in fields, e["name"]
            else:  # a helper: only there to be expanded into a HEADWATER_ variable
                assert f"$({e['name']})" in values, f"{e['name']} is set but never used"
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref["name"].startswith("headwater-clickhouse"):
                one(docs, "KafkaUser", ref["name"])  # the User Operator makes this Secret
            if ref:
                assert ref["key"] in (secret_keys(docs, ref["name"]) or set()), ref
        env = _env(docs, c)
        for k in [k for k in os.environ if k.startswith("HEADWATER_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        settings = Settings()  # raises on any value the service would refuse
        assert "$(" not in json.dumps(settings.model_dump(mode="json")), "unexpanded $(VAR)"
        if "sasl.username" in settings.kafka_config:
            user = settings.kafka_config["sasl.username"]
            secret = [e for e in c["env"] if e["name"] == "KAFKA_PASSWORD"][0]
            assert secret["valueFrom"]["secretKeyRef"]["name"] == user


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_and_ports_agree(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    query = one(docs, "Deployment", "headwater-query")
    processor = one(docs, "Deployment", "headwater-processor")
    (qc,) = _containers(query)
    (pc,) = _containers(processor)
    env = _env(docs, pc)
    # Kafka: bootstrap service and listener port, topic, group, SCRAM users
    kafka = one(docs, "Kafka", "headwater")
    host, _, port = env["HEADWATER_KAFKA_BOOTSTRAP"].partition(":")
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap"
    listener = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port)]
    assert listener and listener[0]["authentication"]["type"] == "scram-sha-512"
    assert json.loads(env["HEADWATER_KAFKA_CONFIG"])["sasl.mechanisms"] == "SCRAM-SHA-512"
    topic = one(docs, "KafkaTopic", "headwater-events")
    assert env["HEADWATER_KAFKA_TOPIC"] == topic["spec"]["topicName"]
    # process refuses a topic whose partition count differs from its configuration
    assert env["HEADWATER_KAFKA_PARTITIONS"] == str(topic["spec"]["partitions"])
    acls = one(docs, "KafkaUser", "headwater-processor")["spec"]["authorization"]["acls"]
    assert {a["resource"]["name"] for a in acls if a["resource"]["type"] == "group"} == {
        env["HEADWATER_KAFKA_GROUP"]}
    assert {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"} == {
        env["HEADWATER_KAFKA_TOPIC"]}
    # the processor count never exceeds the partitions (extra members would idle)
    assert 1 <= processor["spec"]["replicas"] <= topic["spec"]["partitions"]
    # Strimzi lets only pods with the listener's peer labels reach Kafka
    peers = listener[0]["networkPolicyPeers"][0]["podSelector"]["matchLabels"]
    for dep in (query, processor):
        assert peers.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # ClickHouse: service name and port, cluster name, users' secrets
    chi = one(docs, "ClickHouseInstallation", "headwater")
    dsn = env["HEADWATER_DSN"]
    (svc,) = chi["spec"]["templates"]["serviceTemplates"]
    svc_name = svc["generateName"].replace("{chi}", chi["metadata"]["name"])
    https = [p["port"] for p in svc["spec"]["ports"] if p["name"] == "https"]
    assert re.match(rf"^https://headwater:[^@]+@{svc_name}:{https[0]}/\?ca_cert=/\S+$", dsn), dsn
    assert env["HEADWATER_CLUSTER"] in {c["name"] for c in chi["spec"]["configuration"][
        "clusters"]}
    users = chi["spec"]["configuration"]["users"]
    for key, ref in users.items():
        if key.endswith("/k8s_secret_password"):
            name, _, secret_key = ref.partition("/")
            assert secret_key in (secret_keys(docs, name) or set()), (name, secret_key)
    assert users["auditor/profile"] == "readonly"
    assert chi["spec"]["configuration"]["profiles"]["readonly/readonly"] == 1
    keeper = one(docs, "ClickHouseKeeperInstallation", "headwater-keeper")
    assert chi["spec"]["configuration"]["zookeeper"]["nodes"][0]["host"] == \
        f"keeper-{keeper['metadata']['name']}"
    # query service: --listen port == containerPort == probe ports == Service target
    listen = qc["args"][qc["args"].index("--listen") + 1]
    monkeypatch.setenv("HEADWATER_LISTEN", listen)
    port_num = int(Settings().listen.rpartition(":")[2])
    (cport,) = [p for p in qc["ports"] if p["name"] == "grpc"]
    assert cport["containerPort"] == port_num
    assert qc["livenessProbe"]["tcpSocket"]["port"] in (cport["name"], port_num)
    probe_target = qc["readinessProbe"]["exec"]["command"][4]
    assert probe_target == local_target(listen) and probe_target.endswith(f":{port_num}")
    service = one(docs, "Service", "headwater-query")
    (sport,) = service["spec"]["ports"]
    assert sport["targetPort"] == cport["name"] and sport["port"] == port_num
    labels = query["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    policy = one(docs, "NetworkPolicy", "headwater-query-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == [port_num]
    # autoscaler and disruption budgets point at the Deployments
    hpa = one(docs, "HorizontalPodAutoscaler", "headwater-query")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "headwater-query"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        target = one(docs, "Deployment", pdb["metadata"]["name"])
        assert pdb["spec"]["selector"]["matchLabels"].items() <= \
            target["spec"]["template"]["metadata"]["labels"].items()
    # every headwater container: non-root, requests set, image from the overlay
    for d, c in _headwater_containers(docs):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert pod["serviceAccountName"] == "headwater"


# -- gRPC servers: TLS and tokens from mounted Secrets, probes that speak TLS ---------------

_SERVERS = {"serve", "query-service"}
_SERVER_FILES = ("HEADWATER_TLS_CERT_FILE", "HEADWATER_TLS_KEY_FILE",
                 "HEADWATER_AUTH_TOKENS_FILE")
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
_PROBE_MODULE = ["python", "-m", "headwater.query_service.server.probe"]


def image_default_listen() -> str:
    """HEADWATER_LISTEN of the image's runtime stage (what a container without --listen gets)."""
    env = " ".join(ln for ln in _dockerfile_stages()[-1] if ln.startswith("ENV "))
    found = re.search(r"HEADWATER_LISTEN=(\S+)", env)
    return found.group(1) if found else Settings.model_fields["listen"].default


def listen_of(docs: tuple[dict, ...], container: dict) -> str:
    """The address `serve` / `query-service` listens on: --listen, HEADWATER_LISTEN, image."""
    args = container.get("args", [])
    if "--listen" in args:
        return args[args.index("--listen") + 1]
    return _env(docs, container).get("HEADWATER_LISTEN", image_default_listen())


def mounted_file_problem(docs: tuple[dict, ...], deployment: dict, container: dict,
                         path: str) -> str | None:
    """Why `path` is not a readable file of a Secret mounted (no subPath) in the container."""
    pod = deployment["spec"]["template"]["spec"]
    file = PurePosixPath(path)
    mounts = [m for m in container.get("volumeMounts", []) if file.is_relative_to(m["mountPath"])]
    if not mounts:
        return f"{path} is under no volumeMount of container {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    if "subPath" in mount:
        return f"{path}: mount {mount['name']} uses subPath: a renewed Secret never reaches it"
    if file == PurePosixPath(mount["mountPath"]):
        return f"{path} is the directory of mount {mount['name']}, not a file in it"
    (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
    if "secret" not in volume:
        return f"{path}: volume {volume['name']} is not a Secret"
    rel = str(file.relative_to(mount["mountPath"]))
    items = volume["secret"].get("items")
    key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
    name = volume["secret"]["secretName"]
    keys = secret_keys(docs, name)
    if keys is None:
        return f"{path}: Secret {name} is neither in the manifests nor written by a Certificate"
    if key is None or key not in keys:
        return f"{path}: Secret {name} has no key {key or rel!r} (it has {sorted(keys)})"
    mode = volume["secret"].get("defaultMode", 0o644)
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    if not mode & 0o004 and not (fs_group and mode & 0o040):
        return f"{path}: mode {mode:o} without fsGroup: unreadable by a non-root user"
    return None


def _settings_of(env: dict[str, str]) -> Settings:
    """Settings from a container's environment (HEADWATER_* variables only)."""
    return Settings(**{k[10:].lower(): v for k, v in env.items() if k.startswith("HEADWATER_")})


def serving_problems(docs: tuple[dict, ...], deployment: dict) -> list[str]:
    """What would stop the Deployment's gRPC servers from starting or being probed: a
    non-loopback address without TLS + tokens (the server's own check_exposure), a *_FILE
    setting that is no key of a mounted Secret, a plaintext `grpc:` probe against TLS, or a
    TLS health probe that dials another port or would speak plaintext."""
    out = []
    for c in _containers(deployment):
        if not c.get("args") or c["args"][0] not in _SERVERS:
            continue
        where = f"{deployment['metadata']['name']}/{c['name']}"
        listen, env = listen_of(docs, c), _env(docs, c)
        settings = _settings_of(env)
        try:
            security = server_security(settings)
            check_exposure(listen, security)
        except ConfigError as exc:
            out.append(f"{where}: {exc}")
            continue
        if not is_loopback_host(host_of(listen)):
            out += [f"{where}: {name} is not set" for name in _SERVER_FILES if name not in env]
        for name in sorted(k for k in env if k.startswith("HEADWATER_") and k.endswith("_FILE")):
            problem = mounted_file_problem(docs, deployment, c, env[name])
            out += [f"{where}: {name}: {problem}"] if problem else []
        port = listen.rpartition(":")[2]
        for kind in _PROBES:
            probe = c.get(kind, {})
            if "grpc" in probe and security.tls:
                out.append(f"{where}: {kind} is a kubelet grpc probe: plaintext against TLS")
            command = probe.get("exec", {}).get("command", [])
            if command[:4] == [*_PROBE_MODULE, "grpc"]:
                target = command[4] if len(command) > 4 else local_target(listen)
                if target.rpartition(":")[2] != port:
                    out.append(f"{where}: {kind} dials {target}, the server listens on {listen}")
                if security.tls and not (settings.tls_ca_file or settings.tls_cert_file):
                    out.append(f"{where}: {kind} would probe a TLS server in plaintext")
    return out


@pytest.fixture
def no_headwater_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(k)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_servers_get_tls_and_tokens_from_mounted_secrets(overlay: str,
                                                              no_headwater_env: None) -> None:
    docs = rendered(overlay)
    servers = [d for d in of_kind(docs, "Deployment")
               if any(c.get("args", [None])[0] in _SERVERS for c in _containers(d))]
    assert [d["metadata"]["name"] for d in servers] == ["headwater-query"]
    for d in of_kind(docs, "Deployment"):
        assert serving_problems(docs, d) == []
    (qc,) = _containers(one(docs, "Deployment", "headwater-query"))
    assert not is_loopback_host(host_of(listen_of(docs, qc)))  # so the rules above applied
    assert not any("grpc" in qc[kind] for kind in ("readinessProbe", "livenessProbe"))
    # every *_FILE setting of any headwater container is a key of a mounted Secret
    for d, c in _headwater_containers(docs):
        env = _env(docs, c)
        for name in [k for k in env if k.startswith("HEADWATER_") and k.endswith("_FILE")]:
            assert mounted_file_problem(docs, d, c, env[name]) is None, (d, name)
    # the placeholder token file parses (no tokens: every call but health is refused)
    assert parse_tokens(initial_token_file()) == {}


def _mutated(change) -> tuple[tuple[dict, ...], dict]:
    docs = tuple(copy.deepcopy(d) for d in rendered("base"))
    deployment = one(docs, "Deployment", "headwater-query")
    change(deployment["spec"]["template"]["spec"], _containers(deployment)[0])
    return docs, deployment


def _drop_env(name: str):
    def change(pod: dict, c: dict) -> None:
        c["env"] = [e for e in c["env"] if e["name"] != name]
    return change


def _set_env(name: str, value: str):
    def change(pod: dict, c: dict) -> None:
        (e,) = [e for e in c["env"] if e["name"] == name]
        e["value"] = value
    return change


def _mount(name: str, **fields: Any):
    def change(pod: dict, c: dict) -> None:
        (m,) = [m for m in c["volumeMounts"] if m["name"] == name]
        m.update(fields)
    return change


def _probe_to(kind: str, probe: dict):
    def change(pod: dict, c: dict) -> None:
        c[kind] = {**probe, "periodSeconds": 10}
    return change


def _no_listen_arg(pod: dict, c: dict) -> None:
    c["args"] = ["query-service"]


@pytest.mark.parametrize(("change", "expected"), [
    (_drop_env("HEADWATER_AUTH_TOKENS_FILE"),
     "refusing to listen on 0.0.0.0:50051: a non-loopback address needs TLS and token auth; "
     "missing token auth (HEADWATER_AUTH_TOKENS_FILE)"),
    (_drop_env("HEADWATER_TLS_KEY_FILE"), "TLS needs both HEADWATER_TLS_CERT_FILE and "
     "HEADWATER_TLS_KEY_FILE; only the certificate is set"),
    (_set_env("HEADWATER_TLS_KEY_FILE", "/etc/headwater/tls/key.pem"),
     "HEADWATER_TLS_KEY_FILE: /etc/headwater/tls/key.pem: Secret headwater-query-tls has no "
     "key 'key.pem'"),
    (_set_env("HEADWATER_AUTH_TOKENS_FILE", "/etc/headwater/tokens"),
     "HEADWATER_AUTH_TOKENS_FILE: /etc/headwater/tokens is under no volumeMount"),
    (_mount("tls", mountPath="/etc/headwater/certs"),
     "HEADWATER_TLS_CERT_FILE: /etc/headwater/tls/tls.crt is under no volumeMount"),
    (_mount("tokens", mountPath="/etc/headwater/auth/tokens", subPath="tokens"),
     "uses subPath: a renewed Secret never reaches it"),
    (_probe_to("readinessProbe", {"grpc": {"port": 50051}}),
     "readinessProbe is a kubelet grpc probe: plaintext against TLS"),
    (_probe_to("livenessProbe", {"exec": {"command": [*_PROBE_MODULE, "grpc",
                                                       "127.0.0.1:50052"]}}),
     "livenessProbe dials 127.0.0.1:50052, the server listens on 0.0.0.0:50051"),
])
def test_serving_check_names_what_would_break(change, expected: str,
                                              no_headwater_env: None) -> None:
    docs, deployment = _mutated(change)
    found = serving_problems(docs, deployment)
    assert any(expected in p for p in found), found


def test_without_listen_the_image_default_needs_tls_too(no_headwater_env: None) -> None:
    assert not is_loopback_host(host_of(image_default_listen()))
    docs, deployment = _mutated(lambda pod, c: (_no_listen_arg(pod, c), _drop_env(
        "HEADWATER_TLS_CERT_FILE")(pod, c), _drop_env("HEADWATER_TLS_KEY_FILE")(pod, c)))
    assert any(f"refusing to listen on {image_default_listen()}" in p
               for p in serving_problems(docs, deployment))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_query_certificate_is_issued_for_the_service(overlay: str) -> None:
    docs = rendered(overlay)
    (qc,) = _containers(one(docs, "Deployment", "headwater-query"))
    (tls,) = [v for v in one(docs, "Deployment", "headwater-query")["spec"]["template"][
        "spec"]["volumes"] if v["name"] == "tls"]
    certs = [c for c in of_kind(docs, "Certificate")
             if c["spec"]["secretName"] == tls["secret"]["secretName"]]
    assert len(certs) == 1
    spec = certs[0]["spec"]
    service = one(docs, "Service", "headwater-query")
    name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
    assert {name, f"{name}.{ns}", f"{name}.{ns}.svc"} <= set(spec["dnsNames"])
    assert "server auth" in spec["usages"] and set(spec["usages"]) <= _KEY_USAGES
    assert not spec.get("isCA", False)
    hours = lambda d: int(d.removesuffix("h"))  # noqa: E731
    assert 0 < hours(spec["renewBefore"]) < hours(spec["duration"])
    assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
    assert spec["privateKey"].get("rotationPolicy", "Always") in {"Never", "Always"}
    # issuer chain: the CA Issuer signs with the Secret of an isCA Certificate, which is
    # issued by the self-signed Issuer; every issuerRef names an Issuer of the manifests
    for cert in of_kind(docs, "Certificate"):
        ref = cert["spec"]["issuerRef"]
        assert ref["group"] == "cert-manager.io" and ref["kind"] == "Issuer"
        one(docs, "Issuer", ref["name"])
    issuer = one(docs, "Issuer", spec["issuerRef"]["name"])["spec"]
    (ca,) = [c for c in of_kind(docs, "Certificate")
             if c["spec"]["secretName"] == issuer["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True
    assert "selfSigned" in one(docs, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"]
    # the pod's probe verifies the server with the CA that Certificate's Secret carries
    env = _env(docs, qc)
    assert env["HEADWATER_TLS_CA_FILE"].endswith("/ca.crt")
    assert "ca.crt" in (secret_keys(docs, spec["secretName"]) or set())


def test_auditor_role_is_read_only_and_sees_no_secrets() -> None:
    role = one(rendered("base"), "Role", "headwater-auditor")
    verbs = {v for r in role["rules"] for v in r["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert not any("secrets" in r["resources"] or "*" in r["resources"] for r in role["rules"])
    binding = one(rendered("base"), "RoleBinding", "headwater-auditor")
    assert binding["roleRef"]["name"] == "headwater-auditor"


def test_overlays_size_the_tiers() -> None:
    sizes = {}
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        layout = one(docs, "ClickHouseInstallation", "headwater")["spec"]["configuration"][
            "clusters"][0]["layout"]
        sizes[overlay] = (one(docs, "KafkaTopic", "headwater-events")["spec"]["partitions"],
                          one(docs, "Deployment", "headwater-processor")["spec"]["replicas"],
                          layout["shardsCount"], layout["replicasCount"])
        images = {c["image"] for _, c in _headwater_containers(docs)}
        assert len(images) == 1, images
    assert sizes == {"base": (12, 4, 2, 2), "overlays/dev": (3, 1, 1, 1),
                     "overlays/prod": (24, 12, 3, 2)}


# -- the image ------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by FROM."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    lines = [ln for ln in text.replace("\\\n", " ").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for ln in lines:
        if ln.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(ln.strip())
    return stages


def test_dockerfile_is_multi_stage_slim_non_root_and_runs_headwater() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    # every stage starts from a -slim base pinned by digest (directly or through an ARG)
    text = (REPO / "deploy" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s[0].split()[1]) for s in stages]
    assert all(re.match(r"^\S+:[\w.]+-slim@sha256:[0-9a-f]{64}$", b) for b in bases), bases
    assert all(re.match(r"^FROM \S+ AS \w+$", s[0]) for s in stages), [s[0] for s in stages]
    final = stages[-1]
    user = [ln for ln in final if ln.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert json.loads(next(ln for ln in final if ln.startswith("ENTRYPOINT "))[11:]) == [
        "headwater"]
    assert not any("/root" in ln for ln in final)
    copies = [ln for ln in final if ln.startswith("COPY ")]
    assert copies and all("--from=" in ln for ln in copies), "runtime copies from the build"
    # the image's Python satisfies the project's requires-python, and build copies exist
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = re.search(r"python:3\.(\d+)-slim@", bases[-1])
    assert version and int(version.group(1)) >= int(
        project["requires-python"].removeprefix(">=3."))
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for ln in stages[0]:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), src
                assert f"!{src}" in ignore, f"{src} is excluded by .dockerignore"
    # every package of the wheel is copied into the build stage
    dirs = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values())
    copied = {ln.split()[1].rstrip("/") for ln in stages[0] if ln.startswith("COPY ")}
    assert {d.split("/")[0] for d in dirs} <= copied
    # the default listen address of the image is the port the manifests expose
    env_line = next(ln for ln in final if ln.startswith("ENV "))
    assert "HEADWATER_LISTEN=0.0.0.0:50051" in env_line
    assert "EXPOSE 50051" in final


# -- the processor's probe ------------------------------------------------------------------


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    return subprocess.run([sys.executable, "-m", "headwater.query_service.server.probe"],
                          env={**clean, **env}, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.kafka
def test_processor_probe_names_what_it_cannot_reach(broker, tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    ok = _probe({"HEADWATER_KAFKA_BOOTSTRAP": broker.bootstrap,
                 "HEADWATER_DSN": f"chdb://{tmp_path}"})
    assert ok.returncode == 0, ok.stderr
    no_clickhouse = _probe({"HEADWATER_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "HEADWATER_DSN": f"http://{closed}"})
    assert no_clickhouse.returncode == 1
    assert f"cannot reach ClickHouse at http://{closed}/ping" in no_clickhouse.stderr
    no_kafka = _probe({"HEADWATER_KAFKA_BOOTSTRAP": closed,
                       "HEADWATER_DSN": f"chdb://{tmp_path}"})
    assert no_kafka.returncode == 1 and f"cannot reach Kafka at {closed}" in no_kafka.stderr


# -- the query service's TLS health probe, against a real `headwater serve` -----------------


def _pem_pair(subject: str, issuer: tuple | None, ca: bool, dns: list[str]) -> tuple:
    """(key, certificate, key PEM, certificate PEM) of a throwaway EC certificate."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key, cert, key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _secret_modes(deployment: dict, container: dict) -> dict[str, int]:
    """mountPath -> file mode of every Secret volume the container mounts (defaultMode, else
    Kubernetes' 0644)."""
    volumes = {v["name"]: v["secret"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    return {m["mountPath"]: volumes[m["name"]].get("defaultMode", 0o644)
            for m in container.get("volumeMounts", []) if m["name"] in volumes}


class TlsServe:
    """`headwater serve` on 127.0.0.1 with the query pod's TLS and token settings: the files
    laid out as the pod mounts them (under `root` instead of /), the certificate issued for
    the Certificate's DNS names (no IP name: the probe must verify by name)."""

    def __init__(self, root: Path) -> None:
        docs = rendered("base")
        deployment = one(docs, "Deployment", "headwater-query")
        (self.container,) = _containers(deployment)
        cert_spec = one(docs, "Certificate", "headwater-query-tls")["spec"]
        self.server_name = cert_spec["dnsNames"][0]
        ca_key, ca_cert, _, ca_pem = _pem_pair("headwater-ca", None, True, [])
        _, _, key_pem, cert_pem = _pem_pair("headwater-query", (ca_cert.subject, ca_key),
                                            False, cert_spec["dnsNames"])
        self.other_ca = root / "other-ca.crt"
        self.other_ca.write_bytes(_pem_pair("someone else", None, True, [])[3])
        tokens = initial_token_file()
        contents = {"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": ca_pem,
                    "tokens": tokens.encode()}
        env = _env(docs, self.container)
        self.env = {k: str(root / v.lstrip("/")) for k, v in env.items()
                    if k.startswith("HEADWATER_") and k.endswith("_FILE")}
        modes = _secret_modes(deployment, self.container)
        for path in self.env.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(contents[Path(path).name])
            # as the kubelet mounts a Secret: root-owned, the volume's defaultMode
            Path(path).chmod(next(mode for mount, mode in modes.items()
                                  if path.startswith(str(root / mount.lstrip("/")))))
        self.port = free_port()
        self.log = root / "serve.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [*HEADWATER, "serve", "--data-dir", str(root / "data"), "--listen",
                 f"127.0.0.1:{self.port}"], env={**clean, **self.env}, cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def probe(self, env: dict[str, str], port: int | None = None) -> subprocess.CompletedProcess:
        """The pod's readiness command (its target moved to this server's port)."""
        command = self.container["readinessProbe"]["exec"]["command"]
        assert command[:2] == ["python", "-m"]
        target = f"127.0.0.1:{port or self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        return subprocess.run([sys.executable, *command[1:4], target], env={**clean, **env},
                              cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def tls_serve(tmp_path_factory: pytest.TempPathFactory):
    s = TlsServe(tmp_path_factory.mktemp("tls-serve"))
    yield s
    stop(s.proc)


def test_tls_probe_passes_against_the_pods_tls_and_token_settings(tls_serve: TlsServe) -> None:
    deadline = time.monotonic() + 15  # the port is bound before the start-up line is printed
    while "TLS, token auth" not in tls_serve.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "TLS, token auth" in tls_serve.log.read_text()
    ok = tls_serve.probe(tls_serve.env)
    assert ok.returncode == 0, ok.stderr
    assert tls_server_name(Path(tls_serve.env["HEADWATER_TLS_CERT_FILE"]).read_bytes()) == \
        tls_serve.server_name


def test_tls_probe_fails_in_plaintext_with_a_wrong_ca_or_no_server(tls_serve: TlsServe) -> None:
    target = f"127.0.0.1:{tls_serve.port}"
    # what the kubelet's grpc probe does: plaintext against the TLS port
    plain = tls_serve.probe({})
    assert plain.returncode == 1
    assert f"gRPC health check of {target} (plaintext) failed: UNAVAILABLE" in plain.stderr
    other = tls_serve.probe({**tls_serve.env, "HEADWATER_TLS_CA_FILE": str(tls_serve.other_ca)})
    assert other.returncode == 1
    assert f"gRPC health check of {target} (TLS) failed: UNAVAILABLE" in other.stderr
    closed = free_port()
    gone = tls_serve.probe(tls_serve.env, port=closed)
    assert gone.returncode == 1
    assert f"gRPC health check of 127.0.0.1:{closed} (TLS) failed: UNAVAILABLE" in gone.stderr


def test_local_target_dials_loopback_for_a_wildcard_listen() -> None:
    assert local_target("0.0.0.0:50051") == "127.0.0.1:50051"
    assert local_target("[::]:50051") == "127.0.0.1:50051"
    assert local_target("10.1.2.3:7000") == "10.1.2.3:7000"
