"""The demo's trainer: tracked preprocessing of the hospital files and a small torch MLP
trained online with per-sample gradient capture, model versions and an unlearning listener.

Everything here is what a user's own trainer does with the SDK; demo.py drives it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from headwater.demo.data import DATA_NOTE, LICENCE, PERSONAL_COLUMNS
from headwater.producers.capture.torch import TorchCapture
from headwater.producers.tracking import Tracker
from headwater.producers.tracking.sources import load_csv
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.v1 import events_pb2

MODEL_ID = "demo-mlp"


@dataclass(frozen=True)
class Recipe:
    """How the demo trains: epochs before and after the forget request, and the rest."""

    epochs_before: int
    epochs_after: int
    batch: int = 32
    lr: float = 0.1
    hidden: int = 16
    weight_decay: float = 1e-3
    k: int = 512
    seed: int = 0
    test_size: float = 0.2
    predictions: int = 20

    @classmethod
    def of(cls, fast: bool) -> Recipe:
        return cls(3, 3, predictions=10) if fast else cls(10, 10, predictions=40)


@dataclass
class Prepared:
    """The tracked pipeline's outputs: train/test features and labels, as tracked arrays."""

    sources: list[str]  # source ids, in file order
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    rows_per_file: list[int]


def prepare(tracker: Tracker, paths: tuple[Path, ...], recipe: Recipe,
            leaky: bool = False) -> Prepared:
    """Register the files and run the tracked preprocessing: concatenate, split train/test
    (seeded), standardise both with the mean/std fitted on the training rows only.

    `leaky=True` fits the mean/std on all rows before the split (test statistics reach
    training): the report's leakage check must fail on it (tests only)."""
    tables = [load_csv(tracker, p, origin=DATA_NOTE, licence=LICENCE,
                       personal=PERSONAL_COLUMNS) for p in paths]
    both = np.concatenate(tables)
    if leaky:
        x = both[:, :-1]
        both = np.concatenate([(x - x.mean(axis=0)) / x.std(axis=0), both[:, -1:]], axis=1)
    train, test = tracker.split(both, test_size=recipe.test_size, seed=recipe.seed)
    x_train, x_test = train[:, :-1], test[:, :-1]
    if not leaky:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Prepared([tracker.node_of(t) for t in tables], x_train,
                    np.asarray(train[:, -1]), x_test, np.asarray(test[:, -1]),
                    [len(t) for t in tables])


def environment() -> dict[str, str]:
    """The trainer's software and platform, recorded with every model version."""
    import platform

    from headwater import __version__

    return {"headwater": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(terse=True)}


def code_version() -> str:
    """What ran the preprocessing: the package version and the hash of this file."""
    import hashlib

    from headwater import __version__

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"headwater {__version__}; headwater/demo/train.py sha256:{digest}"


def make_model(features: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 1))


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)


def fit(x: Any, y: Any, recipe: Recipe, epochs: int) -> torch.nn.Module:
    """A model trained from scratch (the retrain check of an unlearning request)."""
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    model = make_model(x.shape[1], recipe.hidden, recipe.seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    rng = np.random.default_rng(recipe.seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), recipe.batch):
            idx = torch.as_tensor(order[start:start + recipe.batch])
            opt.zero_grad()
            loss_of(model, x[idx], y[idx]).backward()
            opt.step()
    return model


class Trainer:
    """Online SGD on the tracked training rows, publishing per-sample gradients (all
    parameters, projected to k), a model version per epoch, and applying forget requests
    between steps through the unlearning listener."""

    def __init__(self, publisher: Any, target: str, data: Prepared, recipe: Recipe,
                 listener_token: str | None = None) -> None:
        self.recipe, self.data = recipe, data
        self.x = torch.as_tensor(np.asarray(data.x_train), dtype=torch.float32)
        self.y = torch.as_tensor(data.y_train, dtype=torch.float32)
        self.x_test = torch.as_tensor(np.asarray(data.x_test), dtype=torch.float32)
        self.y_test = torch.as_tensor(data.y_test, dtype=torch.float32)
        self.model = make_model(self.x.shape[1], recipe.hidden, recipe.seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=recipe.lr,
                                   weight_decay=recipe.weight_decay)
        self.capture = TorchCapture(publisher.publish, self.model, MODEL_ID, k=recipe.k,
                                    seed=recipe.seed)
        self.node = data.x_train.node_id
        self.step = self.epoch = 0
        self.rng = np.random.default_rng(recipe.seed)
        self.unlearner = Unlearner(
            self.model, self.x, self.y, test=(self.x_test, self.y_test),
            retrain=lambda xk, yk: fit(xk, yk, recipe, max(self.epoch, 1)),
            l2=len(self.x) * recipe.weight_decay)
        self.listener = UnlearningListener(publisher, target, model_id=MODEL_ID,
                                           dataset=data.x_train, apply=self.unlearner,
                                           capture=self.capture, min_interval=0.2,
                                           token=listener_token)
        self.capture.record_version(0, config=self.config(), l2_penalty=self.l2_penalty())

    def l2_penalty(self) -> float:
        """λ of the objective Σ ℓ + (λ/2)|θ|² that SGD's weight decay on a mean loss over
        the kept rows minimises (λ = n·wd): recorded so the service damps influence by it."""
        return float(len(self.kept_rows()) * self.recipe.weight_decay)

    def config(self) -> dict[str, Any]:
        """What a version records: the recipe, the held-out accuracy measured now (Annex IV
        metrics) and the software it ran on."""
        r = self.recipe
        return {"model": f"MLP {self.x.shape[1]}-{r.hidden}-1", "optimizer": "SGD",
                "lr": r.lr, "weight_decay": r.weight_decay, "batch": r.batch, "k": r.k,
                "epoch": self.epoch, "metrics": {"test_accuracy": self.test_accuracy()},
                "environment": environment()}

    def keys(self, rows: np.ndarray) -> events_pb2.RowKeys:
        return events_pb2.RowKeys(node_ids=[self.node], rows=rows.tolist())

    def run_epoch(self, between_steps: Callable[[], None] = lambda: None) -> Iterator[int]:
        """One epoch; yields after each step. Forgotten rows never train again; the listener
        applies new forget requests between steps."""
        order = self.rng.permutation(len(self.x))
        for start in range(0, len(order), self.recipe.batch):
            rows = self.listener.keep(order[start:start + self.recipe.batch])
            if len(rows):
                xb, yb = self.x[rows], self.y[rows]
                self.capture.capture(xb, yb, self.keys(rows), learning_rate=self.recipe.lr,
                                     step=self.step)
                self.opt.zero_grad()
                loss_of(self.model, xb, yb).backward()
                self.opt.step()
                self.step += 1
            between_steps()
            self.listener.poll()
            yield self.step
        self.epoch += 1
        self.capture.record_version(self.step, config=self.config(),
                                    l2_penalty=self.l2_penalty())

    def kept_rows(self) -> np.ndarray:
        return self.listener.keep(np.arange(len(self.x)))

    def featurise(self) -> int:
        """FEATURISATION gradients of every kept training row at the current version."""
        rows = self.kept_rows()
        return self.capture.featurise([(self.x[rows], self.y[rows], self.keys(rows))])

    def predict(self, tag: str) -> list[str]:
        """PredictionRecorded for the first `predictions` test rows; returns their ids."""
        ids = []
        for i in range(min(self.recipe.predictions, len(self.x_test))):
            pid = f"{tag}-{i}"
            self.capture.record_prediction(
                self.x_test[i], prediction_id=pid,
                input_rows=events_pb2.RowKeys(node_ids=[self.data.x_test.node_id], rows=[i]))
            ids.append(pid)
        return ids

    def test_accuracy(self) -> float:
        with torch.no_grad():
            predicted = (self.model(self.x_test).squeeze(1) > 0).float()
        return float((predicted == self.y_test).float().mean())

    def snapshot(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)
