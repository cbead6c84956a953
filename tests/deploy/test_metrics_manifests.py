"""deploy/k8s turns on the Prometheus endpoint (issue 19) in every overlay, consistently.

Each pod whose command serves metrics (`process`, `query-service`) sets HEADWATER_METRICS_PORT
and HEADWATER_METRICS_HOST=0.0.0.0 (parsed by Settings, as the CLI reads them), names that port
`metrics` and carries the `prometheus.io/scrape|port|path` annotations with the same number
(no Prometheus-operator CRD is in ../shared/k8s-crds, so no PodMonitor). The variable names and
the annotated path are then used against a real `headwater query-service`, scraped and parsed
with prometheus_client. Which peers reach the port: test_cluster_manifests.py (NEEDED/BLOCKED).
"""

from __future__ import annotations

import copy
import os
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.k8s_manifests import OVERLAYS, _containers, of_kind, one, rendered
from test_deploy import _env, _headwater_containers

from conftest import free_port, headwater, stop, wait_for_port
from headwater.query_service.settings import Settings

# the subcommands that call configure_telemetry (headwater/cli/serve.py)
METRICS_COMMANDS = {"serve", "query-service", "process"}
PORT_VAR, HOST_VAR = "HEADWATER_METRICS_PORT", "HEADWATER_METRICS_HOST"


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the container's CLI builds them from its environment."""
    for k in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


def metrics_problems(docs: tuple[dict, ...], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why Prometheus would not scrape every metrics-serving pod of the rendered docs: the
    settings, the `metrics` containerPort and the scrape annotations must name one port, bound
    on the pod's address; other workloads set none of it."""
    out: list[str] = []
    ports: set[int] = set()
    for d, c in _headwater_containers(docs):
        where = f"{d['kind']}/{d['metadata']['name']}"
        env = _env(docs, c)
        notes = d["spec"]["template"].get("metadata", {}).get("annotations", {})
        if c["args"][0] not in METRICS_COMMANDS:
            if PORT_VAR in env or "prometheus.io/scrape" in notes:
                out.append(f"{where}: `{c['args'][0]}` serves no metrics, yet is set to")
            continue
        settings = _settings(env, monkeypatch)
        port = settings.metrics_port
        if not port:
            out.append(f"{where}: {PORT_VAR} is unset (or 0): no fixed metrics port")
            continue
        ports.add(port)
        if settings.metrics_host != "0.0.0.0":
            out.append(f"{where}: {HOST_VAR}={settings.metrics_host}: the scraper cannot reach it")
        named = [p for p in c.get("ports", []) if p.get("name") == "metrics"]
        if [p["containerPort"] for p in named] != [port]:
            out.append(f"{where}: containerPort `metrics` {named} is not {PORT_VAR}={port}")
        clash = [p for p in c.get("ports", []) if p.get("name") != "metrics"
                 and p["containerPort"] == port]
        if clash:
            out.append(f"{where}: port {port} is also {clash}")
        want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics"}
        got = {k: notes.get(k) for k in want}
        if got != want:
            out.append(f"{where}: pod annotations {got} are not {want}")
    if len(ports) > 1:
        out.append(f"metrics ports differ between workloads: {sorted(ports)}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_metrics_pod_is_scrapable_on_one_port(overlay: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    assert metrics_problems(docs, monkeypatch) == []
    served = {d["metadata"]["name"] for d, c in _headwater_containers(docs)
              if c["args"][0] in METRICS_COMMANDS}
    assert served == {"headwater-processor", "headwater-query"}
    # the NetworkPolicy opens the named port on exactly these pods (flows: cluster tests)
    policy = one(docs, "NetworkPolicy", "headwater-metrics-ingress")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for name in served:
        labels = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == ["metrics"]
    for job in of_kind(docs, "Job"):  # selected too, but no port is named `metrics` there
        assert not [p for c in _containers(job) for p in c.get("ports", [])
                    if p.get("name") == "metrics"]


def _broken(change) -> tuple[dict, ...]:
    docs = tuple(copy.deepcopy(d) for d in rendered("base"))
    change(one(docs, "Deployment", "headwater-query"))
    return docs


def _set_env(name: str, value: str):
    def change(dep: dict) -> None:
        (c,) = _containers(dep)
        for e in c["env"]:
            if e["name"] == name:
                e["value"] = value
    return change


def test_the_check_catches_each_inconsistency(monkeypatch: pytest.MonkeyPatch) -> None:
    def annotation(dep: dict) -> None:
        dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9090"

    def container_port(dep: dict) -> None:
        (c,) = _containers(dep)
        [p for p in c["ports"] if p["name"] == "metrics"][0]["containerPort"] = 9465

    def no_annotations(dep: dict) -> None:
        del dep["spec"]["template"]["metadata"]["annotations"]

    cases = {
        "annotation": (annotation, "pod annotations"),
        "containerPort": (container_port, "containerPort `metrics`"),
        "annotations gone": (no_annotations, "pod annotations"),
        "loopback": (_set_env(HOST_VAR, "127.0.0.1"), "the scraper cannot reach it"),
        "other port": (_set_env(PORT_VAR, "9465"), "metrics ports differ"),
        "grpc port": (_set_env(PORT_VAR, "50051"), "port 50051 is also"),
    }
    for what, (change, message) in cases.items():
        problems = metrics_problems(_broken(change), monkeypatch)
        assert any(message in p for p in problems), (what, problems)


def test_a_value_the_cli_would_refuse_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="metrics_port"):
        metrics_problems(_broken(_set_env(PORT_VAR, "70000")), monkeypatch)


def test_query_service_serves_the_annotated_path_from_the_manifest_variables(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's variable names and annotated path against a real `query-service`;
    the port is a free one and the host loopback (tests bind 127.0.0.1 only)."""
    docs = rendered("base")
    query = one(docs, "Deployment", "headwater-query")
    (c,) = _containers(query)
    env = _env(docs, c)
    assert {PORT_VAR, HOST_VAR} <= env.keys() and env[HOST_VAR] == "0.0.0.0"
    path = query["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    port, metrics_port = free_port(), free_port()
    proc = headwater("query-service", "--dsn", f"chdb://{tmp_path / 'clickhouse'}",
                     "--listen", f"127.0.0.1:{port}",
                     env={PORT_VAR: str(metrics_port), HOST_VAR: "127.0.0.1"})
    try:
        wait_for_port(metrics_port, timeout=90, proc=proc)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}",
                                        timeout=10) as answer:
                assert answer.headers["Content-Type"].startswith("text/plain")
                families = {f.name for f in text_string_to_metric_families(
                    answer.read().decode())}
            if "headwater_store_rows" in families or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "headwater_store_rows" in families, sorted(families)
    finally:
        stop(proc)
