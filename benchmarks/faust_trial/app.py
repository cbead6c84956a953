"""A faust-streaming worker running Headwater's EventSink: consume -> store -> (ack) commit.

    python app.py BOOTSTRAP TOPIC GROUP DSN BATCH [raise-on-batch N] [guard]

The issue-18 trial of faust-streaming (docs/design-decisions.md), kept as the evidence of
faust's own `take_events` losing data; the project's runner is stream_processors/
kafka_runner.py (faust-streaming and cramjam are now dependencies). BATCH counts Kafka
messages; a message carrying the `headwater-bundle` header holds many events, which
EventSink.ingest expands (so the headers and key are passed on, as the confluent loop
passed them).

`raise-on-batch N`: the sink raises StoreError on the Nth batch (a store outage). Without
`guard` the error propagates out of the agent's loop (faust's own behaviour is on trial);
with `guard` the worker exits (os._exit) before faust's take_events acks the batch.
"""
import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import faust

from headwater.errors import StoreError
from headwater.producers.transports.base import Record
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store

bootstrap, topic_name, group, dsn, batch = sys.argv[1:6]
raise_on = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "raise-on-batch" else 0
guard = "guard" in sys.argv
logging.basicConfig(level=logging.WARNING)

app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                broker_commit_interval=0.2, topic_partitions=4, web_enabled=False,
                consumer_auto_offset_reset="earliest", producer_acks=-1)
topic = app.topic(topic_name, value_type=bytes, value_serializer="raw")
store = Store(dsn)
store.migrate()
sink = EventSink(store, "kafka")
state = {"batches": 0, "stored": 0, "t_first": None}


@app.agent(topic)
async def process(stream):
    loop = asyncio.get_running_loop()
    async for events in stream.take_events(int(batch), within=0.5):
        records = [Record(value=e.message.value or b"", topic=e.message.topic,
                          partition=e.message.partition, offset=e.message.offset,
                          headers=_headers(e.message.headers), key=e.message.key or b"")
                   for e in events]
        state["batches"] += 1
        try:
            if state["batches"] == raise_on:
                raise StoreError("store unreachable (injected)")
            acks = await loop.run_in_executor(None, sink.ingest, records)
        except StoreError:
            if guard:
                print(f"STORE FAILED on batch {state['batches']} "
                      f"(offsets {records[0].offset}..{records[-1].offset}); exiting "
                      "before faust acks it", flush=True)
                os._exit(70)
            raise
        state["stored"] += len(acks)  # one ack per event, a bundle's events each their own
        if state["t_first"] is None:
            state["t_first"] = time.perf_counter()
        print(f"BATCH {state['batches']} messages={len(records)} events={len(acks)} "
              f"stored={state['stored']}", flush=True)


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """aiokafka hands a record's headers as a sequence of (str, bytes | None) pairs; faust
    passes them on as given (a mapping only when it produced them itself)."""
    if not headers:
        return ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k, v or b"") for k, v in pairs)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
