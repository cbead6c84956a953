"""Delivering a run's OpenLineage events through openlineage-python's own client and
transports, configured the way every OpenLineage integration is: `OPENLINEAGE_URL` (+
`OPENLINEAGE_API_KEY`, `OPENLINEAGE_ENDPOINT`) for HTTP (Marquez), or `openlineage.yml`
(`OPENLINEAGE_CONFIG`, the working directory, `~/.openlineage/`) and `OPENLINEAGE__*`
variables for any transport (http, kafka, file, composite, ...). The events are the export's
(openlineage.py), typed as the client's RunEvents so transports key and route them as theirs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from headwater.errors import ConfigError, PublishError
from headwater.query_service.lineage.openlineage import export_run
from headwater.query_service.tables import Reader


def typed(event: dict[str, Any]) -> Any:
    """One exported RunEvent (a dict) as openlineage-python's `event_v2.RunEvent`; the
    facets stay the export's dicts (their `_producer` and `_schemaURL` included)."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )

    def dataset(kind: Any, d: dict[str, Any], extra: str) -> Any:
        return kind(namespace=d["namespace"], name=d["name"], facets=d.get("facets") or {},
                    **{extra: d.get(extra) or None})  # None: left out, as in the export

    facets = dict(event["run"].get("facets") or {})
    if "parent" in facets:  # typed: transports read it (Kafka keys a run's events by it)
        facets["parent"] = _parent(facets["parent"])
    run = Run(runId=event["run"]["runId"], facets=facets)
    job = Job(namespace=event["job"]["namespace"], name=event["job"]["name"],
              facets=event["job"].get("facets") or {})
    return RunEvent(eventType=RunState(event["eventType"]), eventTime=event["eventTime"],
                    run=run, job=job, producer=event["producer"],
                    inputs=[dataset(InputDataset, d, "inputFacets")
                            for d in event.get("inputs", [])],
                    outputs=[dataset(OutputDataset, d, "outputFacets")
                             for d in event.get("outputs", [])])


def _parent(facet: dict[str, Any]) -> Any:
    from openlineage.client.facet_v2 import parent_run

    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=facet["run"]["runId"], facets=None),  # None: left out
        job=parent_run.Job(namespace=facet["job"]["namespace"], name=facet["job"]["name"],
                           facets=None),
        producer=facet["_producer"])


def configured_client() -> Any:
    """openlineage-python's client as the environment configures it; a ConfigError when
    nothing does (the client would print events to the console instead)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.noop import NoopConfig, NoopTransport

    # the configuration as the client reads it (file, OPENLINEAGE__* variables), asked of a
    # client given a transport, so it does not warn that it will print to the console
    found = OpenLineageClient(transport=NoopTransport(NoopConfig())).config.transport or {}
    if not (os.environ.get("OPENLINEAGE_URL") or found.get("type")
            or os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true"):
        raise ConfigError("no OpenLineage transport configured: set OPENLINEAGE_URL (HTTP, "
                          "e.g. Marquez) or write an openlineage.yml (OPENLINEAGE_CONFIG, the "
                          "working directory or ~/.openlineage/) naming a transport")
    return OpenLineageClient()


def emit(events: Sequence[dict[str, Any]], client: Any = None) -> int:
    """Send `events` in order through `client` (default: configured_client()); wait until
    the transport has delivered them. Returns how many were sent."""
    client = client if client is not None else configured_client()
    try:
        for event in events:
            client.emit(typed(event))
    except Exception as exc:  # transports raise their own errors (HTTP, Kafka, files)
        raise PublishError(f"OpenLineage transport {client.transport.kind!r} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close(timeout=30.0)
    return len(events)


def emit_run(reader: Reader, run_id: str, client: Any = None) -> int:
    """A run's OpenLineage events (export_run) delivered through the configured transport."""
    return emit(export_run(reader, run_id), client)
