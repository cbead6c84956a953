"""Live OpenLineage delivery (HEADWATER_OPENLINEAGE_LIVE): each op's RunEvent goes out
through openlineage-python's transport as soon as the op is stored — exactly the export's
op events — and a failing lineage server never stops ingest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from integration.test_openlineage import RUN, publish_pipeline
from integration.test_openlineage_delivery import Endpoint, _bodies, _expected
from openlineage.client import OpenLineageClient
from openlineage.client.transport.http import HttpConfig, HttpTransport

from headwater.producers import LocalTransport, Publisher
from headwater.query_service.lineage.openlineage import export_run
from headwater.query_service.lineage.openlineage_live import LiveLineage, LiveLineageSink
from headwater.stream_processors.store import Store


def _client(url: str) -> OpenLineageClient:
    return OpenLineageClient(transport=HttpTransport(HttpConfig(url=url)))


def test_every_stored_op_is_sent_as_the_export_says(store: Store, tmp_path: Path) -> None:
    endpoint = Endpoint()
    try:
        live = LiveLineage(store, _client(endpoint.url))
        sink = LiveLineageSink(store, "local", live)
        with Publisher(LocalTransport(sink), run_id=RUN) as pub:
            publish_pipeline(pub, tmp_path)
        live.close()
        export = export_run(store, RUN)
        ops = [e for e in export if e["job"]["facets"]["jobType"]["jobType"] == "OP"]
        assert len(ops) == len(export) - 1 >= 4  # every op; the run's event is not live
        received = _bodies(endpoint)
        def key(event: dict) -> str:
            return json.dumps(event, sort_keys=True)

        assert sorted(map(key, received)) == sorted(map(key, _expected(ops)))
        order = [b["job"]["name"] for b in received]
        assert order.index(f"{RUN}.pandas.merge.op-join") == len(order) - 1  # published last
    finally:
        endpoint.stop()


def test_a_failing_lineage_server_never_stops_ingest(store: Store, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    failing = Endpoint(status=503)
    try:
        live = LiveLineage(store, _client(failing.url))
        with caplog.at_level(logging.WARNING), \
                Publisher(LocalTransport(LiveLineageSink(store, "local", live)),
                          run_id=RUN) as pub:
            made = publish_pipeline(pub, tmp_path)
        live.close()
    finally:
        failing.stop()
    stored = store.query("SELECT count() FROM lineage_ops FINAL WHERE run_id = {r:String}",
                         {"r": RUN})[0][0]
    assert stored >= 4 and made["train"]
    assert failing.received  # it was tried
    assert "OpenLineage: live send failed (" in caplog.text and "503" in caplog.text
    assert "lineage openlineage --emit" in caplog.text
