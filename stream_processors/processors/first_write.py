"""First write wins: an event id stands for the content it was first accepted with (pure).

The event log is evidence, so a stored event is never replaced. A record whose event id is
already stored (or came earlier in the same batch) is an idempotent repeat when its content
hash is the same (a redelivery: nothing is written again) and a conflicting duplicate when
it differs (refused to dead_letters; the stored event stays).
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.stream_processors.processors.decode import Accepted, Rejected


@dataclass(frozen=True)
class Screened:
    new: list[Accepted]  # to store
    repeats: list[Accepted]  # already stored with this content: acknowledged, not rewritten
    conflicts: list[Rejected]  # a different event under a stored id: refused


def screen(accepted: list[Accepted], stored: dict[str, bytes]) -> Screened:
    """Split a batch given the content hash stored for each of its ids (`stored`)."""
    first = dict(stored)
    out = Screened([], [], [])
    for a in accepted:
        event_id, content = a.envelope.event_id, a.envelope.hash
        known = first.get(event_id)
        if known is None:
            first[event_id] = content
            out.new.append(a)
        elif known == content:
            out.repeats.append(a)
        else:
            out.conflicts.append(Rejected(
                a.index, a.record, f"conflicting duplicate: event_id {event_id} was "
                f"first accepted with content sha256 {known.hex()[:16]}…; this one has "
                f"{content.hex()[:16]}… (a stored event is never replaced)", a.event))
    return out
