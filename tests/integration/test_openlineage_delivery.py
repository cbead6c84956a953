"""OpenLineage delivery through openlineage-python's own client and transports, configured
the standard way (OPENLINEAGE_URL, openlineage.yml), against a stand-in HTTP endpoint (as
Marquez would be) on loopback and, with the broker, Kafka."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from integration.test_openlineage import RUN, stored  # noqa: F401 - the fixture
from openlineage.client.serde import Serde

from conftest import run_headwater
from headwater.errors import ConfigError, PublishError
from headwater.query_service.lineage.openlineage import export_run
from headwater.query_service.lineage.openlineage_delivery import configured_client, emit_run

OL_VARIABLES = ("OPENLINEAGE_URL", "OPENLINEAGE_API_KEY", "OPENLINEAGE_ENDPOINT",
                "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED")


class Endpoint:
    """A stand-in lineage endpoint: keeps every POST (path, headers, JSON body)."""

    def __init__(self, status: int = 201) -> None:
        self.received: list[tuple[str, dict[str, str], Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No OpenLineage configuration from the machine: no variables, no openlineage.yml in
    the working directory or ~/.openlineage."""
    for name in OL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _expected(events: list[dict]) -> list[dict]:
    return [Serde.remove_nulls_and_enums(json.loads(json.dumps(e))) for e in events]


def _bodies(endpoint: Endpoint) -> list[dict]:
    """What arrived, less the `tags` run facet openlineage-python adds to every event."""
    bodies = [json.loads(json.dumps(body)) for _, _, body in endpoint.received]
    for body in bodies:
        tags = body["run"]["facets"].pop("tags")
        assert tags["_producer"].startswith("https://github.com/OpenLineage/OpenLineage/")
    return bodies


def test_openlineage_url_sends_every_event_over_http(stored, endpoint: Endpoint,  # noqa: F811
                                                     clean_env: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = stored
    monkeypatch.setenv("OPENLINEAGE_URL", endpoint.url)
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "ol-key-123")
    sent = emit_run(store, RUN)
    events = export_run(store, RUN)
    assert sent == len(events) == len(endpoint.received)
    assert _bodies(endpoint) == _expected(events)  # in order, the export's events exactly
    paths = {path for path, _, _ in endpoint.received}
    assert paths == {"/api/v1/lineage"}  # Marquez's endpoint, the client's default
    assert all(h["Authorization"] == "Bearer ol-key-123" for _, h, _ in endpoint.received)


def test_openlineage_yml_configures_the_transport(stored, endpoint: Endpoint,  # noqa: F811
                                                  clean_env: Path) -> None:
    store, _ = stored
    (clean_env / "openlineage.yml").write_text(
        f"transport:\n  type: http\n  url: {endpoint.url}\n  endpoint: custom/lineage\n")
    emit_run(store, RUN)
    assert [p for p, _, _ in endpoint.received] == ["/custom/lineage"] * len(
        export_run(store, RUN))
    assert _bodies(endpoint) == _expected(export_run(store, RUN))


def test_a_failing_endpoint_is_a_publish_error(stored, clean_env: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = stored
    failing = Endpoint(status=500)
    try:
        monkeypatch.setenv("OPENLINEAGE_URL", failing.url)
        with pytest.raises(PublishError, match="OpenLineage transport 'http' failed: .*500"):
            emit_run(store, RUN)
    finally:
        failing.stop()


def test_without_configuration_nothing_is_printed_instead(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="no OpenLineage transport configured: set "
                       "OPENLINEAGE_URL"):
        configured_client()
    done = run_headwater("lineage", "openlineage", "--run", "r", "--emit",
                         "--data-dir", str(clean_env / "none"), cwd=clean_env)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("headwater: error: no OpenLineage transport")


@pytest.mark.kafka
def test_kafka_transport_from_openlineage_yml(stored, broker, clean_env: Path) -> None:  # noqa: F811
    """openlineage-python's Kafka transport: every event on the topic, one run's events under
    one key (the run's job), so they stay ordered in one partition."""
    from confluent_kafka import Consumer

    store, _ = stored
    topic = f"openlineage-{clean_env.name[-12:]}"
    broker.create_topic(topic, partitions=3)
    (clean_env / "openlineage.yml").write_text(
        f"transport:\n  type: kafka\n  topic: {topic}\n"
        f"  config:\n    bootstrap.servers: {broker.bootstrap}\n")
    sent = emit_run(store, RUN)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    try:
        for _ in range(60):
            got += [m for m in consumer.consume(50, timeout=1.0) if m.error() is None]
            if len(got) >= sent:
                break
    finally:
        consumer.close()
    assert len(got) == sent
    assert {m.key() for m in got} == {f"run:headwater/{RUN}".encode()}
    bodies = [json.loads(m.value()) for m in sorted(got, key=lambda m: m.offset())]
    for body in bodies:
        body["run"]["facets"].pop("tags")
    assert bodies == _expected(export_run(store, RUN))
