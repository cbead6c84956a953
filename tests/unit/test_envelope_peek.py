"""peek: an encoded event's id and payload kind from its top-level fields alone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.producers.envelope import PAYLOAD_FIELDS, EnvelopeBuilder, peek
from headwater.v1 import events_pb2


def test_every_payload_kind_and_the_event_id() -> None:
    builder = EnvelopeBuilder("peek-run")
    for payload_type, field in PAYLOAD_FIELDS.items():
        event = builder.wrap(payload_type())
        assert peek(event.SerializeToString()) == (event.event_id, field)


def test_bytes_that_are_not_an_event() -> None:
    event = EnvelopeBuilder("peek-run").wrap(events_pb2.OpRecorded(op_id="o"))
    data = event.SerializeToString()
    assert peek(data[:-3]) == ("", None)  # cut inside the payload
    assert peek(b"\x0a\xff\xff") == ("", None)
    assert peek(b"\x0a\x02\xff\xfe") == ("", None)  # event_id not UTF-8
    assert peek(b"") == ("", None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    event_id, kind = peek(data)
    assert kind is None or kind in PAYLOAD_FIELDS.values()
