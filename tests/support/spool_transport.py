"""A transport that appends each event to a file (4-byte length, then the bytes), and
rebuilds itself in a publishing worker process: tests read what a child process sent."""

from __future__ import annotations

import struct
import time
from pathlib import Path

from headwater.errors import PublishError
from headwater.producers.transports.spec import TransportSpec

_LENGTH = struct.Struct("<I")


class SpoolTransport:
    """Events appended to `path`; `fail_after`: sends after that many raise PublishError;
    `hold`: a send waits (up to 60 s) until that file exists."""

    def __init__(self, path: str, fail_after: int | None = None, hold: str | None = None
                 ) -> None:
        self.path = path
        self.fail_after = fail_after
        self.hold = hold
        self.sent = 0
        self.rebuild_spec = TransportSpec("support.spool_transport:SpoolTransport", (path,),
                                          {"fail_after": fail_after, "hold": hold})

    def send(self, key: str, event_id: str, value: bytes) -> None:
        deadline = time.monotonic() + 60
        while self.hold is not None and not Path(self.hold).exists() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise PublishError(f"spool refuses event {event_id}: fail_after={self.fail_after}")
        self.sent += 1
        with open(self.path, "ab") as f:
            f.write(_LENGTH.pack(len(value)) + value)

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


def read_spool(path: str | Path) -> list[bytes]:
    """Every event in the file, in the order sent."""
    data, out, pos = Path(path).read_bytes() if Path(path).exists() else b"", [], 0
    while pos < len(data):
        (n,) = _LENGTH.unpack_from(data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out
