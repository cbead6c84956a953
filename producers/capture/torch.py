"""Per-sample gradient capture for torch models with `torch.func` (vmap over grad).

Importing this module imports torch; the rest of the SDK does not need it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from headwater.producers.capture.recorder import (
    Publish,
    Recorder,
    Weights,
    margin_weights,
    regression_weights,
)
from headwater.v1 import events_pb2


def select_parameters(model: torch.nn.Module, parameters: str | Sequence[str]) -> list[str]:
    """Names of the parameters whose gradients are captured: "all", "last_layer" (the
    parameters of the last module that has any), or module/parameter names (a module name
    selects all of its parameters)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if parameters == "all":
        return names
    if parameters == "last_layer":
        last = [m for m in model.modules() if list(m.parameters(recurse=False))][-1]
        own = {id(p) for p in last.parameters(recurse=False)}
        return [n for n, p in model.named_parameters() if id(p) in own]
    if isinstance(parameters, str):
        raise ValueError(f"parameters must be 'all', 'last_layer' or a list of names; "
                         f"got {parameters!r}")
    chosen: list[str] = []
    for want in parameters:
        hits = [n for n in names if n == want or n.startswith(want + ".")]
        if not hits:
            raise ValueError(f"no trainable parameter or module named {want!r}; the model has "
                             f"{', '.join(names[:20])}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


class TorchCapture(Recorder):
    """Captures φ = P ∇_θ f per sample for a torch model (`model(x)` -> outputs).

    Classification: outputs [n] or [n, 1] are a binary logit (labels 0/1), [n, C] are
    class logits; f is the margin of the row's label, log p_y - log(1 - p_y).
    Regression: outputs [n] or [n, 1], f is the output.
    """

    framework = "torch"

    def __init__(self, publish: Publish, model: torch.nn.Module, model_id: str, *,
                 parameters: str | Sequence[str] = "all", **kwargs: Any) -> None:
        self.model = model
        self.names = select_parameters(model, parameters)
        named = dict(model.named_parameters())
        d = sum(named[n].numel() for n in self.names)
        super().__init__(publish, model_id, d, parameters=self.names, **kwargs)
        self._per_sample = vmap(grad(self._margin_of_one), in_dims=(None, None, 0, 0))

    def parameter_hash(self) -> str:
        digest = hashlib.sha256()
        for name, p in self.model.named_parameters():
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _margin(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f per row from model outputs [n, ...] and labels/targets [n]."""
        if self.task == "regression" or out.dim() == 1 or out.shape[-1] == 1:
            f = out.reshape(out.shape[0])
            if self.task == "regression":
                return f
            return torch.where(y.reshape(-1) > 0, f, -f)  # binary: margin of label y
        y = y.reshape(-1).long()
        own = out.gather(1, y[:, None]).squeeze(1)
        others = out.scatter(1, y[:, None], float("-inf"))
        return own - torch.logsumexp(others, dim=1)

    def _margin_of_one(self, trained: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor],
                       x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, {**frozen, **trained}, (x.unsqueeze(0),))
        return self._margin(out, y.unsqueeze(0))[0]

    def features(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, Weights,
                                                                  torch.Tensor]:
        """(φ [n, k], weights, f [n]) at the model's current parameters."""
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        named = dict(self.model.named_parameters())
        trained = {n: named[n].detach() for n in self.names}
        frozen = {n: p.detach() for n, p in named.items() if n not in trained}
        frozen.update(dict(self.model.named_buffers()))
        with torch.no_grad():
            out = self.model(x)
            f = self._margin(out, y)
        grads = self._per_sample(trained, frozen, x, y)
        blocks, offset = [], 0
        for name in self.names:
            g = grads[name].reshape(x.shape[0], -1)
            blocks.append((offset, g))
            offset += g.shape[1]
        phi = self.projection.project_blocks(blocks)
        phi = phi.detach().cpu().numpy() if isinstance(phi, torch.Tensor) else phi
        fn = f.double().cpu().numpy()
        if self.task == "classification":
            weights = margin_weights(fn)
        else:
            weights = regression_weights(fn, y.double().reshape(-1).cpu().numpy())
        return np.asarray(phi, dtype=np.float32), weights, f

    def capture(self, x: torch.Tensor, y: torch.Tensor, keys: events_pb2.RowKeys, *,
                learning_rate: float, step: int = 0, reduction: str = "mean",
                featurisation: bool = False) -> events_pb2.GradientBatch:
        """Publish the batch's per-sample gradients at the current parameters (call it
        before `optimizer.step()`). `learning_rate` is the optimiser's; with a mean-reduced
        loss each sample's step is lr / batch size, which is what is recorded."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
        phi, weights, _ = self.features(x, y)
        per_sample = learning_rate / len(phi) if reduction == "mean" else learning_rate
        return self.publish_gradients(phi, weights, keys, learning_rate=per_sample, step=step,
                                      targets=torch.as_tensor(y).detach().cpu().numpy(),
                                      featurisation=featurisation)

    def featurise(self, batches: Any) -> int:
        """Re-compute the gradients of training rows at the current version (FEATURISATION
        events): `batches` yields (x, y, keys). Returns the number of rows."""
        rows = 0
        for x, y, keys in batches:
            self.capture(x, y, keys, learning_rate=0.0, featurisation=True)
            rows += len(x)
        return rows

    def record_prediction(self, x: torch.Tensor, *, label: int | None = None,
                          prediction_id: str | None = None,
                          input_rows: events_pb2.RowKeys | None = None
                          ) -> events_pb2.PredictionRecorded:
        """PredictionRecorded for one input: the output and φ' of the margin of `label`
        (default: the predicted class) or of the output (regression)."""
        x = torch.as_tensor(x)
        if x.shape[0] != 1:
            x = x.unsqueeze(0)
        with torch.no_grad():
            out = self.model(x)
        if self.task == "classification":
            if label is None:
                label = int(out.reshape(-1)[0] > 0) if out.numel() == 1 else int(out.argmax())
            y = torch.tensor([label])
        else:
            y = out.reshape(1).detach()
        phi, _, _ = self.features(x, y)
        return self.publish_prediction(phi, out.detach().cpu().numpy(), label or 0,
                                       prediction_id=prediction_id, input_rows=input_rows)
