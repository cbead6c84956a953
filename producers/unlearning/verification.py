"""Verification maths (membership AUC, gap closed, retrain targets) and the model
adapters: one interface over LinearModel and torch modules."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers.capture.recorder import TASKS
from headwater.producers.unlearning.linear import (
    LinearModel,
)
from headwater.producers.unlearning.rows import (
    CHUNK,
    Rows,
    as_numpy,
    pair,
)
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    import torch


# -- verification maths ----------------------------------------------------------------------

def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold membership attack: P(loss of a member < loss of a
    non-member), ties counted half (Mann-Whitney U from average ranks). 0.5 = no signal."""
    m = np.asarray(member_losses, dtype=np.float64).ravel()
    n = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"membership AUC needs members and non-members; got {len(m)} and "
                         f"{len(n)} rows")
    scores = -np.concatenate([m, n])  # a lower loss => predicted member
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank within each run of ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[:len(m)].sum() - len(m) * (len(m) + 1) / 2.0
    return float(u / (len(m) * len(n)))


def gap_closed(before: float, after: float, retrained: float) -> float:
    """(after − before) / (retrained − before): 1 = the forget loss moved exactly as far as
    retraining moved it, 0 = not at all, > 1 = overshoot. NaN when retraining did not move it."""
    denominator = retrained - before
    if abs(denominator) <= 1e-12 * max(1.0, abs(before)):
        return float("nan")
    return float((after - before) / denominator)


@dataclass(frozen=True)
class RetrainTargets:
    """Quality targets against retraining from scratch (issue text): gap closed within
    [low, high], distance to the retrained parameters <= `distance_ratio` × the original's,
    |test accuracy − retrained's| <= `accuracy_pp` points, |MIA AUC − retrained's| <=
    `membership_auc`."""

    gap_low: float = 0.9
    gap_high: float = 1.1
    distance_ratio: float = 0.10
    accuracy_pp: float = 0.5
    membership_auc: float = 0.05

    def failures(self, v: events_pb2.Verification, original_distance: float) -> list[str]:
        """The targets `v` misses (empty = all met); `original_distance` = ||θ_before −
        θ_retrained|| (UnlearnResult.detail["original_distance_to_retrained"])."""
        if not v.retrained:
            return ["not verified against retraining (retrained is false)"]
        out = []
        if not self.gap_low <= v.gap_closed <= self.gap_high:  # NaN fails too
            out.append(f"gap closed {v.gap_closed:.3f} outside [{self.gap_low}, "
                       f"{self.gap_high}]")
        ratio = v.distance_to_retrained / original_distance if original_distance > 0 \
            else float("inf")
        if not ratio <= self.distance_ratio:
            out.append(f"distance to retrained is {ratio:.3f} of the original's "
                       f"(> {self.distance_ratio})")
        pp = 100 * abs(v.test_accuracy_after - v.retrain_test_accuracy)
        if not pp <= self.accuracy_pp:
            out.append(f"test accuracy {pp:.2f} pp from the retrained model's "
                       f"(> {self.accuracy_pp})")
        mia = abs(v.membership_auc - v.retrain_membership_auc)
        if not mia <= self.membership_auc:
            out.append(f"membership AUC {mia:.3f} from the retrained model's "
                       f"(> {self.membership_auc})")
        return out


# -- model adapters: one interface over LinearModel and torch modules ---------------------

class Adapter:
    """Per-row losses, a quality score (accuracy; R² for regression) and the flat parameter
    vector of a model, for verification."""

    def losses(self, model: Any, rows: Rows) -> np.ndarray:
        raise NotImplementedError

    def accuracy(self, model: Any, rows: Rows) -> float:
        raise NotImplementedError

    def params(self, model: Any) -> np.ndarray:
        raise NotImplementedError

    def as_model(self, like: Any, retrained: Any) -> Any:
        """A retrain callable's result (model or parameters) as a model of `like`'s kind."""
        raise NotImplementedError


class LinearAdapter(Adapter):
    def losses(self, model: LinearModel, rows: Rows) -> np.ndarray:
        return model.losses(*rows)

    def accuracy(self, model: LinearModel, rows: Rows) -> float:
        x, y = model._rows(*rows, "test")
        if model.task == "classification":
            return float(np.mean(model.predict(x) == y))
        return _r2(model.decision(x), y)

    def params(self, model: LinearModel) -> np.ndarray:
        return model.params

    def as_model(self, like: LinearModel, retrained: Any) -> LinearModel:
        if isinstance(retrained, LinearModel):
            return retrained
        return like.with_params(as_numpy(retrained))


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float(1.0 - ((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


class TorchAdapter(Adapter):
    def __init__(self, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        self.task = task

    def outputs(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        import torch

        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return torch.cat([model(x[lo:lo + CHUNK]) for lo in range(0, len(x), CHUNK)])
        finally:
            model.train(was)

    def losses(self, model: torch.nn.Module, rows: Rows) -> np.ndarray:
        x, y = torch_rows(model, rows, self.task, "rows")
        return torch_losses(self.outputs(model, x), y, self.task).double().cpu().numpy()

    def accuracy(self, model: torch.nn.Module, rows: Rows) -> float:
        x, y = torch_rows(model, rows, self.task, "test")
        out = self.outputs(model, x)
        if self.task == "regression":
            return _r2(out.reshape(-1).double().cpu().numpy(), y.double().cpu().numpy())
        pred = (out.reshape(-1) > 0).long() if out.dim() == 1 or out.shape[-1] == 1 \
            else out.argmax(dim=1)
        return float((pred == y.long()).double().mean())

    def params(self, model: torch.nn.Module) -> np.ndarray:
        return np.concatenate([p.detach().double().cpu().numpy().ravel()
                               for p in model.parameters()])

    def as_model(self, like: torch.nn.Module, retrained: Any) -> torch.nn.Module:
        import torch

        if isinstance(retrained, torch.nn.Module):
            return retrained
        out = copy.deepcopy(like)
        if isinstance(retrained, dict):
            out.load_state_dict(retrained)
            return out
        flat = torch.as_tensor(as_numpy(retrained)).reshape(-1)
        total = sum(p.numel() for p in out.parameters())
        if flat.numel() != total:
            raise ValueError(f"retrained parameters have {flat.numel()} values; the model has "
                             f"{total}")
        torch.nn.utils.vector_to_parameters(flat.to(next(out.parameters())), out.parameters())
        return out


def torch_losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per-row loss: ½(f − y)² (regression), logistic on a binary logit [n] / [n, 1] (labels
    0/1), softmax cross-entropy on class logits [n, C] — TorchCapture's conventions."""
    import torch.nn.functional as F

    if task == "regression":
        return 0.5 * (out.reshape(len(out)) - y.reshape(len(out)).to(out.dtype)) ** 2
    if out.dim() == 1 or out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(len(out)), y.to(out.dtype),
                                                  reduction="none")
    return F.cross_entropy(out, y.long(), reduction="none")


def torch_rows(model: torch.nn.Module, rows: Rows, task: str,
                what: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x, y = pair(rows, what)
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters to unlearn")
    x = torch.as_tensor(x)
    x = x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
    y = torch.as_tensor(y).to(p.device).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{what} has {len(x)} rows but its labels/targets have {len(y)}")
    if task == "classification" and (y.is_floating_point()
                                     and not torch.equal(y, y.round())):
        raise ValueError(f"{what}: classification labels must be integers")
    return x, y
