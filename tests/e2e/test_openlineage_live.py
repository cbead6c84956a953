"""`headwater serve` with HEADWATER_OPENLINEAGE_LIVE: ops published over gRPC reach a
stand-in lineage endpoint (OPENLINEAGE_URL) as they are stored; without a transport
configured serve refuses to start, naming what to set."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from integration.test_openlineage_delivery import Endpoint

from conftest import free_port, headwater, run_headwater, stop, wait_for_port
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.tracking import Tracker


def test_serve_sends_ops_live(tmp_path: Path) -> None:
    endpoint = Endpoint()
    port = free_port()
    proc = headwater("serve", "--data-dir", str(tmp_path / "data"), "--listen",
                     f"127.0.0.1:{port}", cwd=tmp_path,
                     env={"HEADWATER_OPENLINEAGE_LIVE": "true", "OPENLINEAGE_URL": endpoint.url})
    try:
        wait_for_port(port, timeout=90, proc=proc)
        with Publisher(GrpcTransport(f"127.0.0.1:{port}"), run_id="live-run") as pub:
            tracker = Tracker(pub.publish)
            data = tracker.array(np.arange(12.0).reshape(6, 2))
            tracker.split(tracker.shuffle(data, seed=0), test_size=0.5, seed=1)
        deadline = time.monotonic() + 30
        while len(endpoint.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        names = [body["job"]["name"] for _, _, body in endpoint.received]
        assert len(names) >= 3 and all(n.startswith("live-run.") for n in names), names
        assert {body["run"]["facets"]["parent"]["job"]["name"]
                for _, _, body in endpoint.received} == {"live-run"}
    finally:
        stop(proc)
        endpoint.stop()


def test_serve_without_a_transport_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = run_headwater("serve", "--data-dir", str(tmp_path / "data"), "--listen",
                         f"127.0.0.1:{free_port()}", cwd=tmp_path,
                         env={"HEADWATER_OPENLINEAGE_LIVE": "true", "HOME": str(home),
                              "OPENLINEAGE_URL": "", "OPENLINEAGE_CONFIG": ""}, timeout=90)
    assert done.returncode == 2
    assert "headwater: error: no OpenLineage transport configured" in done.stderr
