"""A held training step copied into a slot of a publishing worker process's ring, by the
trainer's thread: one `torch._foreach_copy_` into torch views of the slot, made once per
slot and layout (making the views costs several times the copy of a small model's step)."""

from __future__ import annotations

from typing import Any

import torch

from headwater.producers.worker.ring import ALIGN, Spec, offsets, step_bytes

Layout = tuple[Any, ...]  # per array: (shape, dtype) or the index of the array it repeats


def layout_of(tensors: list[torch.Tensor]) -> tuple[Layout, list[torch.Tensor]]:
    """(layout, the distinct tensors): a tensor given again (the last layer's δ is the
    output's gradient) is copied once and named by its first index after that."""
    first: dict[int, int] = {}
    distinct: list[torch.Tensor] = []
    key: list[Any] = []
    for i, t in enumerate(tensors):
        at = first.setdefault(id(t), i)
        if at == i:
            key.append((t.shape, t.dtype))
            distinct.append(t)
        else:
            key.append(at)
    return tuple(key), distinct


def spec_of(layout: Layout) -> Spec | None:
    """The ring's (NumPy) description of a layout, which the worker reads; None for a
    dtype NumPy lacks (bfloat16)."""
    try:
        return [item if isinstance(item, int)
                else (tuple(item[0]), torch.empty(0, dtype=item[1]).numpy().dtype.str)
                for item in layout]
    except TypeError:
        return None


def slot_bytes_for(tensors: list[torch.Tensor]) -> int | None:
    """Bytes a step of these tensors takes in a slot; None when the ring cannot carry them
    (a dtype NumPy lacks)."""
    spec = spec_of(layout_of(tensors)[0])
    return None if spec is None else step_bytes(spec)


class RingSlots:
    """Torch views of one capture's ring (a worker.process.RingWriter), and the copy."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        ring = writer.ring
        self.buffer = torch.frombuffer(ring.memory.buf, dtype=torch.uint8)
        self.views: dict[int, tuple[Layout, list[torch.Tensor]]] = {}
        # per layout seen: the layout itself (one object, so a slot's views are matched by
        # identity) and its spec (None: it does not fit a slot)
        self.specs: dict[Layout, tuple[Layout, Spec | None]] = {}

    def put(self, tensors: list[torch.Tensor]) -> tuple[int, Spec] | None:
        """Copy a step's tensors into the next free slot (waiting while the ring is full);
        (slot, spec), or None when they do not fit a slot."""
        layout, distinct = layout_of(tensors)
        known = self.specs.get(layout)
        if known is None:
            spec = spec_of(layout)
            if spec is not None and step_bytes(spec) > self.writer.ring.slot_bytes:
                spec = None
            known = self.specs[layout] = (layout, spec)
        layout, spec = known
        if spec is None:
            return None
        slot = self.writer.claim()
        cached = self.views.get(slot)
        if cached is None or cached[0] is not layout:
            cached = (layout, self._views(slot, layout, spec))
            self.views[slot] = cached
        # grad mode off for the copy (the output and hidden inputs require grad), set
        # directly: `with torch.no_grad()` costs ~4 µs inside a step, more than this
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            torch._foreach_copy_(cached[1], distinct)
        finally:
            torch._C._set_grad_enabled(enabled)
        return slot, spec

    def _views(self, slot: int, layout: Layout, spec: Spec) -> list[torch.Tensor]:
        base = self.writer.ring.slot_offset(slot)
        views = []
        for item, at in zip(layout, offsets(spec), strict=True):
            if isinstance(item, int):
                continue
            shape, dtype = item
            size = shape.numel() * dtype.itemsize
            assert (base + at) % ALIGN == 0
            views.append(self.buffer[base + at:base + at + size].view(dtype).view(shape))
        return views

    def close(self) -> None:
        """Let go of the views (the shared memory can then be unmapped)."""
        self.views.clear()
        self.buffer = torch.empty(0, dtype=torch.uint8)
