"""Frames on the pipes between the trainer and its publishing worker process: a 4-byte
length, then a pickled tuple (what kind of message, its fields). Both ends are this SDK."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, BinaryIO

_LENGTH = struct.Struct("<I")


def write_frame(fd: int, message: tuple[Any, ...]) -> None:
    """Write one whole frame to `fd` (blocking; a full pipe makes the writer wait)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_LENGTH.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def read_frame(stream: BinaryIO) -> tuple[Any, ...] | None:
    """The next frame from a buffered pipe, or None at its end (the writer is gone)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = stream.read(length)
    if len(body) < length:
        return None
    return pickle.loads(body)  # type: ignore[no-any-return]  # noqa: S301 - our own child
