"""Per-sample gradient capture in the trainer, for attribution: recorder.py (the events,
loss weights, the Recorder base), linear.py (NumPy linear models, closed form), torch.py
(torch models: factored from the step's own backward, or dense via torch.func),
factored.py (the layer hooks, φ per layer) and rescale.py (loss -> margin gradients) —
the modules here that import torch —, projection.py (the seeded random projection P, pure)
and kronecker.py (the per-layer factored projection and its k budget, pure).

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
    "KroneckerProjection": "headwater.producers.capture.kronecker",
    "plan_factors": "headwater.producers.capture.kronecker",
    "FactoredFallback": "headwater.producers.capture.torch",
    "make_projection": "headwater.producers.capture.projection",
}
__all__ = [
    "FactoredFallback",
    "KroneckerProjection",
    "LinearCapture",
    "Projection",
    "Publish",
    "Recorder",
    "TASKS",
    "TorchCapture",
    "Weights",
    "make_projection",
    "margin_weights",
    "plan_factors",
    "regression_weights",
    "select_parameters",
]

if TYPE_CHECKING:
    from headwater.producers.capture.kronecker import KroneckerProjection, plan_factors
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
    from headwater.producers.capture.torch import (
        FactoredFallback,
        TorchCapture,
        select_parameters,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)
