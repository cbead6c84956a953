"""A ring of fixed-size slots in shared memory: the trainer copies a finished step's arrays
into a free slot (capture/ring_slots.py), the publishing worker process reads them in place
and frees the slot.

Layout: a 64-byte header (int64 0: slots freed so far, written only by the reader), then
`slots` slots of `slot_bytes`. A step's arrays lie in its slot one after the other, each at
a 64-byte aligned offset; its `Spec` (shape and dtype per array, or the index of an earlier
array that is the same) is all the reader needs to find them. NumPy only: no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

HEADER = 64
ALIGN = 64

# per array: (shape, dtype name), or the index of an earlier array of the step it repeats
Spec = list[tuple[tuple[int, ...], str] | int]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def array_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of one array's values (unaligned)."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def step_bytes(spec: Spec) -> int:
    """Bytes a step of this spec takes in a slot."""
    return sum(_aligned(array_bytes(*item)) for item in spec if not isinstance(item, int))


def offsets(spec: Spec) -> list[int]:
    """Each array's byte offset in its slot (a repeated array: its first's)."""
    out: list[int] = []
    at = 0
    for item in spec:
        if isinstance(item, int):
            out.append(out[item])
        else:
            out.append(at)
            at += _aligned(array_bytes(*item))
    return out


@dataclass
class StepRing:
    """One side of the ring (the creating trainer's or the attached worker's)."""

    memory: shared_memory.SharedMemory
    slots: int
    slot_bytes: int

    def __post_init__(self) -> None:
        buf = self.memory.buf
        assert buf is not None
        self._count = buf[:8].cast("q")  # the header's counter, read cheaply

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> StepRing:
        if slots < 1 or slot_bytes < ALIGN:
            raise ValueError(f"a ring needs >= 1 slot of >= {ALIGN} bytes; got {slots} x "
                             f"{slot_bytes}")
        slot_bytes = _aligned(slot_bytes)
        memory = shared_memory.SharedMemory(create=True, size=HEADER + slots * slot_bytes)
        ring = cls(memory, slots, slot_bytes)
        ring._count[0] = 0
        return ring

    @classmethod
    def attach(cls, name: str, slots: int, slot_bytes: int) -> StepRing:
        """The worker's side. Python's resource tracker would unlink the segment when this
        process exits; the trainer owns it, so the tracker is told to forget it."""
        memory = shared_memory.SharedMemory(name=name)
        try:
            from multiprocessing import resource_tracker

            resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - Python 3.13+ has track=False instead
            pass
        return cls(memory, slots, slot_bytes)

    @property
    def name(self) -> str:
        return self.memory.name

    def freed(self) -> int:
        """Slots the reader has freed so far (monotonic; an aligned 8-byte word, written
        by the reader alone)."""
        return self._count[0]  # type: ignore[no-any-return]

    def free(self, count: int) -> None:
        """The reader is done with `count` more slots (in ring order)."""
        self._count[0] += count

    def slot_offset(self, slot: int) -> int:
        """Where `slot` starts in the shared memory."""
        return HEADER + slot * self.slot_bytes

    def read(self, slot: int, spec: Spec) -> list[np.ndarray]:
        """Views of a step's arrays in `slot` (valid until the slot is freed)."""
        base = self.slot_offset(slot)
        out: list[np.ndarray] = []
        for item, at in zip(spec, offsets(spec), strict=True):
            if isinstance(item, int):
                out.append(out[item])
            else:
                out.append(np.ndarray(item[0], np.dtype(item[1]), self.memory.buf, base + at))
        return out

    def close(self, unlink: bool = False) -> None:
        """Let go of the mapping (and, for its creator, remove the segment)."""
        self._count.release()
        try:
            self.memory.close()
        except BufferError:  # views of it still alive: the mapping goes when they do
            pass
        finally:
            if unlink:
                try:
                    self.memory.unlink()
                except FileNotFoundError:
                    pass
