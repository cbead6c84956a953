"""What every transport offers, and the records/acks that cross the in-process boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from headwater.errors import PublishError


@dataclass(frozen=True)
class Record:
    """One encoded message as received: the bytes and where they came from."""

    value: bytes
    topic: str = ""
    partition: int = -1
    offset: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()
    principal: str = ""  # who sent it, as authenticated (token name, certificate subject)
    key: bytes = b""  # the Kafka message key (the run id), kept with a dead letter
    # The headwater.v1.Event parsed from `value` by a receiver that had to read it already
    # (serve's role check), so the sink does not parse the same bytes twice; None otherwise.
    parsed: object | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Ack:
    """The fate of one event handed to a sink: stored, or rejected with the reason."""

    index: int
    event_id: str
    accepted: bool
    error: str = ""


class Sink(Protocol):
    """Stores encoded events durably and says, per event, whether it was accepted."""

    def ingest(self, records: list[Record]) -> list[Ack]: ...


class Transport(Protocol):
    """Delivers encoded events; `flush` returns only when all sent so far are stored."""

    def send(self, key: str, event_id: str, value: bytes) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


def raise_for_rejects(acks: list[Ack], sent_ids: list[str]) -> None:
    """Raise PublishError naming every rejected event (they are kept in dead_letters).

    `sent_ids` are the ids of the events sent, in order: they name events whose bytes
    did not even decode on the other side.
    """
    rejected = [
        a if a.event_id or not 0 <= a.index < len(sent_ids)
        else Ack(a.index, sent_ids[a.index], a.accepted, a.error)
        for a in acks if not a.accepted
    ]
    if rejected:
        shown = "; ".join(f"{a.event_id or f'#{a.index}'}: {a.error}" for a in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        raise PublishError(
            f"{len(rejected)} event(s) rejected by the service: {shown}{more}",
            [a.event_id for a in rejected],
        )
