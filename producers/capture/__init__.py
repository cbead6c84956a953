"""Per-sample gradient capture in the trainer, for attribution: recorder.py (the events,
loss weights, the Recorder base), linear.py (NumPy linear models, closed form), torch.py
(torch models via torch.func; the only module here that imports torch), projection.py (the
seeded random projection P, pure).

Names are imported on first use (PEP 562): importing the pure projection does not load
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_exports

_EXPORTS = {
    "TASKS": "headwater.producers.capture.recorder",
    "Publish": "headwater.producers.capture.recorder",
    "Recorder": "headwater.producers.capture.recorder",
    "Weights": "headwater.producers.capture.recorder",
    "margin_weights": "headwater.producers.capture.recorder",
    "regression_weights": "headwater.producers.capture.recorder",
    "LinearCapture": "headwater.producers.capture.linear",
    "TorchCapture": "headwater.producers.capture.torch",
    "select_parameters": "headwater.producers.capture.torch",
    "Projection": "headwater.producers.capture.projection",
    "make_projection": "headwater.producers.capture.projection",
}
__all__ = [
    "LinearCapture",
    "Projection",
    "Publish",
    "Recorder",
    "TASKS",
    "TorchCapture",
    "Weights",
    "make_projection",
    "margin_weights",
    "regression_weights",
    "select_parameters",
]

if TYPE_CHECKING:
    from headwater.producers.capture.linear import LinearCapture
    from headwater.producers.capture.projection import Projection, make_projection
    from headwater.producers.capture.recorder import (
        TASKS,
        Publish,
        Recorder,
        Weights,
        margin_weights,
        regression_weights,
    )
    from headwater.producers.capture.torch import TorchCapture, select_parameters


__getattr__ = lazy_exports(__name__, _EXPORTS)
