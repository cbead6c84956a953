"""A group of finished training steps -> one GradientBatch per step, projected together.

The same code runs on a BackgroundPublisher's worker thread (the steps' tensors are the
trainer's own, held by reference) and in the publishing worker process (the tensors are
views of the shared-memory ring the trainer copied them into), so both publish the same
events, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headwater.producers.capture.factored import Projector
from headwater.producers.capture.recorder import (
    Recorder,
    Weights,
    margin_weights,
    regression_weights,
)
from headwater.producers.capture.rescale import LossMismatch, OutputGradient, group_scales
from headwater.v1 import events_pb2

TINY = 1e-30  # |c q| below this: the row's loss gradient carries no margin gradient

Taken = tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]
# (x, y, φ rows to fill, which rows): recomputes φ of rows whose loss gradient underflowed
MarginPass = Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor, np.ndarray], None]


@dataclass
class HeldStep:
    """A finished step as its group's build reads it."""

    taken: Taken | Exception  # (inputs a, δ) per layer name (Taps.pairs), or why not
    state: OutputGradient  # the model's output, its corrected gradient, the labels
    x: torch.Tensor | None  # the batch (for a margin pass; None where there is no model)
    keys: events_pb2.RowKeys
    learning_rate: float
    step: int
    version: str


class Scale:
    """c, the loss's per-row scale, as last measured: a step that cannot measure its own
    (every row certain) reuses it."""

    def __init__(self, value: float | None = None) -> None:
        self.value = value

    def accept(self, measured: float | None | LossMismatch, n: int) -> float:
        """c from a step's measured scale (None: the last measured, else 1/n), checked and
        kept; a refusal is raised."""
        if isinstance(measured, LossMismatch):
            raise measured
        c = measured if measured is not None else (self.value or 1.0 / n)
        if not c > 0:
            raise LossMismatch(f"the loss's per-row scale is {c}, not positive: capture.step()"
                               " expects a loss that is minimised (cross-entropy, squared "
                               "error)")
        self.value = c
        return c


def weights_of(task: str, f: np.ndarray, y: torch.Tensor) -> Weights:
    """Loss, q and w per row from the margins (or outputs) f and the labels (targets)."""
    if task == "classification":
        return margin_weights(f)
    return regression_weights(f, y.detach().double().reshape(-1).cpu().numpy())


def ratio(c: float, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
    """(r, lost): δ_loss = r δ_f row by row (r = -c q), with r set to 1 on the rows whose
    loss gradient is too small to carry the margin gradient (`lost`)."""
    r = -c * weights.q
    lost = np.abs(r) < TINY
    r[lost] = 1.0
    return r, lost


def build_group(recorder: Recorder, projector: Projector, scale: Scale, held: list[HeldStep],
                margin_pass: MarginPass | None) -> list[events_pb2.GradientBatch | Exception]:
    """The GradientBatch of every held step, projected together; a step that fails (a
    refused loss) is its exception, so the others are still published. `margin_pass`
    None (no model here): a step with a row whose loss gradient underflowed fails."""
    out: list[Any] = [None] * len(held)
    taken, good = [], []
    for i, h in enumerate(held):
        if isinstance(h.taken, Exception):
            out[i] = h.taken
        else:
            taken.append(h.taken)
            good.append(i)
    if not taken:
        return out
    phi, sizes = projector.phi_group(taken)
    fs, scales = group_scales([held[i].state for i in good])  # the group in one go
    factor = np.ones(len(phi))  # loss -> margin gradient, row by row; 1: a failed step
    kept: list[tuple[int, int, int, Weights, float, np.ndarray]] = []
    start = 0
    for i, n, f, measured in zip(good, sizes, fs, scales, strict=True):
        try:
            weights = weights_of(recorder.task, f, held[i].state.labels)
            c = scale.accept(measured, n)
            factor[start:start + n], lost = ratio(c, weights)
            kept.append((i, start, n, weights, c, lost))
        except Exception as exc:  # noqa: BLE001 - the worker raises it at flush
            out[i] = exc
        start += n
    phi /= torch.as_tensor(factor, dtype=phi.dtype, device=phi.device)[:, None]
    for i, start, n, _, _, lost in kept:
        if not lost.any():
            continue
        h = held[i]
        try:
            if margin_pass is None:
                raise RuntimeError(
                    f"step {h.step}: {int(lost.sum())} row(s) have a loss gradient of 0 (a "
                    "certain prediction or an exact fit) and need a margin pass, which needs "
                    "the model; the publishing process has none")
            margin_pass(h.x, h.state.labels, phi[start:start + n], lost)
        except Exception as exc:  # noqa: BLE001 - the worker raises it at flush
            out[i] = exc
    encoded = recorder.encoded(phi)  # one conversion for the group
    for i, start, n, weights, c, _ in kept:
        h = held[i]
        if out[i] is None:
            out[i] = recorder.gradient_batch(
                encoded[start:start + n], weights, h.keys, learning_rate=h.learning_rate * c,
                step=h.step, version=h.version,
                targets=h.state.labels.detach().cpu().numpy())
    return out
