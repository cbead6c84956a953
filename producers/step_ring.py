"""A ring of fixed-size slots in shared memory: the trainer copies a finished step's arrays
into a free slot, the publishing worker process reads them in place and frees the slot.

Layout: a 64-byte header (int64 0: slots freed so far, written only by the reader), then
`slots` slots of `slot_bytes`. A step's arrays lie in its slot one after the other, each at
a 64-byte aligned offset; its `Spec` (shape and dtype per array, or the index of an earlier
array that is the same) is all the reader needs to find them. NumPy only: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

HEADER = 64
ALIGN = 64

# per array: (shape, dtype name), or the index of an earlier array of the step it repeats
Spec = list[tuple[tuple[int, ...], str] | int]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def step_bytes(spec: Spec) -> int:
    """Bytes a step of this spec takes in a slot."""
    total = 0
    for item in spec:
        if not isinstance(item, int):
            shape, dtype = item
            total += _aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return total


@dataclass
class StepRing:
    """One side of the ring (the creating trainer's or the attached worker's)."""

    memory: shared_memory.SharedMemory
    slots: int
    slot_bytes: int

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> StepRing:
        if slots < 1 or slot_bytes < ALIGN:
            raise ValueError(f"a ring needs >= 1 slot of >= {ALIGN} bytes; got {slots} x "
                             f"{slot_bytes}")
        slot_bytes = _aligned(slot_bytes)
        memory = shared_memory.SharedMemory(create=True, size=HEADER + slots * slot_bytes)
        ring = cls(memory, slots, slot_bytes)
        ring.counter()[0] = 0
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

    def counter(self) -> np.ndarray:
        """The header's int64: slots the reader has freed so far (monotonic)."""
        return np.ndarray((1,), np.int64, self.memory.buf, 0)

    def freed(self) -> int:
        return int(np.ndarray((1,), np.int64, self.memory.buf, 0)[0])

    def free(self, count: int) -> None:
        """The reader is done with `count` more slots (in ring order)."""
        view = np.ndarray((1,), np.int64, self.memory.buf, 0)
        view[0] += count

    def write(self, slot: int, arrays: list[np.ndarray | int]) -> Spec:
        """Copy `arrays` (an int: repeat that earlier array) into `slot`; their Spec."""
        base, offset = HEADER + slot * self.slot_bytes, 0
        spec: Spec = []
        for a in arrays:
            if isinstance(a, int):
                spec.append(a)
                continue
            dst = np.ndarray(a.shape, a.dtype, self.memory.buf, base + offset)
            np.copyto(dst, a, casting="no")
            spec.append((a.shape, a.dtype.str))
            offset += _aligned(a.nbytes)
        return spec

    def read(self, slot: int, spec: Spec) -> list[np.ndarray]:
        """Views of a step's arrays in `slot` (valid until the slot is freed)."""
        base, offset = HEADER + slot * self.slot_bytes, 0
        out: list[np.ndarray] = []
        for item in spec:
            if isinstance(item, int):
                out.append(out[item])
                continue
            shape, dtype = item
            view = np.ndarray(shape, np.dtype(dtype), self.memory.buf, base + offset)
            out.append(view)
            offset += _aligned(view.nbytes)
        return out

    def close(self, unlink: bool = False) -> None:
        """Let go of the mapping (and, for its creator, remove the segment)."""
        try:
            self.memory.close()
        finally:
            if unlink:
                try:
                    self.memory.unlink()
                except FileNotFoundError:
                    pass
