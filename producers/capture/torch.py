"""Per-sample gradient capture for torch models: factored from the training step's own
backward (hooks on nn.Linear / nn.Conv2d, the default), or dense with `torch.func` (vmap over
grad: exact per-sample gradients of any layer, the fallback).

Importing this module imports torch; the rest of the SDK does not need it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch.autograd.graph import GradientEdge
from torch.func import functional_call, grad, jacrev, vmap

from headwater.producers.capture.factored import (
    Layer,
    Projector,
    Record,
    Taps,
    find_layers,
    plain,
)
from headwater.producers.capture.groups import (
    TINY,
    HeldStep,
    Scale,
    build_group,
    ratio,
    weights_of,
)
from headwater.producers.capture.kronecker import KroneckerProjection, plan_factors
from headwater.producers.capture.recorder import (
    Publish,
    Recorder,
    Weights,
    _keys,
)
from headwater.producers.capture.rescale import (
    LossMismatch,
    OutputGradient,
    loss_scale,
    margins,
    watch,
)
from headwater.producers.capture.ring_slots import RingSlots, slot_bytes_for
from headwater.v1 import events_pb2

MODES = ("auto", "factored", "dense")
CERTAIN = 1e-25  # a row's largest |loss gradient| at the output below this may be < TINY


GROUP = 32  # steps held back on the trainer's thread, then projected together on the worker


@dataclass
class _Held:
    """A finished step whose projection and event wait for the rest of its group."""

    x: torch.Tensor  # a copy of the batch
    pointer: int  # the caller's batch tensor's data pointer (a layer input there is x)
    y: torch.Tensor
    state: OutputGradient
    calls: list[tuple[int, Any, Any]]  # Taps.resolve's (layer, a, δ)
    keys: events_pb2.RowKeys
    learning_rate: float
    step: int
    version: str


class FactoredFallback(UserWarning):
    """The factored capture cannot take some layers; the dense vmap path runs instead."""


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


class _Step:
    """The context manager `TorchCapture.step()` returns (a plain class: a generator-based
    @contextmanager costs a few µs more of the trainer's thread per step)."""

    __slots__ = ("capture", "x", "y", "keys", "learning_rate", "step", "begun")

    def __init__(self, capture: TorchCapture, x: Any, y: Any, keys: events_pb2.RowKeys,
                 learning_rate: float, step: int) -> None:
        self.capture, self.x, self.y, self.keys = capture, x, y, keys
        self.learning_rate, self.step = learning_rate, step
        self.begun: Any = None

    def __enter__(self) -> None:
        self.begun = self.capture._begin(self.x, self.y, self.keys)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        x, y, keys, dense, state, record = self.begun
        self.begun = None
        try:
            self.capture._taps.stop()
        finally:
            state.release()
        if exc_type is None:
            self.capture._end(x, y, keys, dense, state, record, self.learning_rate,
                              self.step)


class TorchCapture(Recorder):
    """Captures φ = P ∇_θ f per sample for a torch model (`model(x)` -> outputs).

    Classification: outputs [n] or [n, 1] are a binary logit (labels 0/1), [n, C] are
    class logits; f is the margin of the row's label, log p_y - log(1 - p_y).
    Regression: outputs [n] or [n, 1], f is the output.

    mode "auto" (default): factored when every selected parameter belongs to an nn.Linear
    or a supported nn.Conv2d (P = P_rows ⊗ P_cols per layer, k split over the layers as
    `factor_shapes` or plan_factors says; identity when d <= k), else dense with one
    FactoredFallback warning naming the layers. "factored" refuses instead of falling back;
    "dense" is the exact vmap path with a dense seeded P.

    `group`: with a BackgroundPublisher, `step()` holds up to this many steps' layer inputs
    and output gradients (references, no copies but the batch's own input), then hands them
    to the worker as one job, which projects them with one product per layer factor and
    builds one GradientBatch per step (the same events, in the same order); the publisher's
    flush and any other event of this capture submit a partial group first. With a
    ProcessPublisher the held steps' tensors are copied into its shared-memory ring instead
    and the group is built in the worker process, by the same code (capture/groups.py).
    """

    framework = "torch"
    last_step: int

    def __init__(self, publish: Publish, model: torch.nn.Module, model_id: str, *,
                 parameters: str | Sequence[str] = "all", mode: str = "auto",
                 factor_shapes: dict[str, tuple[int, int]] | None = None,
                 group: int = GROUP, **kwargs: Any) -> None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive integer (steps projected together); "
                             f"got {group!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.model = model
        self.names = select_parameters(model, parameters)
        named = dict(model.named_parameters())
        d = sum(named[n].numel() for n in self.names)
        self.layers: list[Layer] | None = None
        spec: KroneckerProjection | None = None
        if mode != "dense":
            layers, refused = find_layers(model, self.names)
            kind = kwargs.get("projection", "rademacher")
            if kind != "rademacher" and d > kwargs.get("k", 512):
                refused.append(f"projection={kind!r} (factors are rademacher)")
            if refused and mode == "factored":
                raise ValueError("the factored capture cannot take " + ", ".join(refused) +
                                 "; use mode='auto' or 'dense' (exact per-sample gradients "
                                 "through torch.func.vmap)")
            if refused:
                warnings.warn("factored gradient capture cannot take " + ", ".join(refused) +
                              "; falling back to the dense vmap path for this model",
                              FactoredFallback, stacklevel=2)
            else:
                self.layers = layers
                self.names = [n for layer in layers for n in layer.parameters]
                if d > kwargs.get("k", 512):
                    factors = plan_factors([(la.name, la.rows, la.cols, la.bias)
                                            for la in layers], kwargs.get("k", 512),
                                           factor_shapes)
                    spec = KroneckerProjection(kwargs.get("seed", 0), factors,
                                               tuple(self.names))
        if factor_shapes and spec is None:
            raise ValueError("factor_shapes apply to the factored capture of more than k "
                             "parameters only")
        super().__init__(publish, model_id, d, parameters=self.names, projection_spec=spec,
                         **kwargs)
        self._projector = Projector(self.layers, spec) if self.layers is not None else None
        self._per_sample = vmap(grad(self._margin_of_one), in_dims=(None, None, 0, 0))
        self._scales = Scale()  # the loss's per-row scale c, last measured
        self._taps = Taps(self.layers or [])
        self.group = group
        self._pending: list[Any] = []  # _Held (worker thread) or ring slots (process)
        # a worker process (ProcessPublisher): held steps go through a shared-memory ring,
        # opened at the first step held; it takes CPU tensors only
        self._open_ring: Any = getattr(publish, "open_ring", None) if self.layers else None
        self._ring: RingSlots | None = None
        if self._open_ring is not None and any(p.device.type != "cpu"
                                               for p in model.parameters()):
            self._open_ring = None
            warnings.warn("the publishing process reads CPU tensors through shared memory; "
                          "this model is not on the CPU, so its steps are projected on the "
                          "trainer's thread (use a BackgroundPublisher)", FactoredFallback,
                          stacklevel=2)
        before_flush = getattr(publish, "before_flush", None)
        self._grouped = before_flush is not None
        if before_flush is not None:
            before_flush(self._drain)

    @property
    def mode(self) -> str:
        """"factored" or "dense": the path this capture runs."""
        return "dense" if self.layers is None else "factored"

    def parameter_hash(self) -> str:
        digest = hashlib.sha256()
        for name, p in self.model.named_parameters():
            digest.update(name.encode())
            # the raw bytes, read as uint8: the same bytes as .numpy() for every dtype NumPy
            # has, and bfloat16 (which it lacks) too
            digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
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


    def _dense_phi(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """φ through vmap(grad): every per-sample gradient formed, then projected by P."""
        named = dict(self.model.named_parameters())
        trained = {n: named[n].detach() for n in self.names}
        frozen = {n: p.detach() for n, p in named.items() if n not in trained}
        frozen.update(dict(self.model.named_buffers()))
        grads = self._per_sample(trained, frozen, x, y)
        blocks, offset = [], 0
        for name in self.names:
            g = grads[name].reshape(x.shape[0], -1)
            blocks.append((offset, g))
            offset += g.shape[1]
        return torch.as_tensor(self.projection.project_blocks(blocks))  # type: ignore[union-attr]

    def _factored_phi(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """φ of the margins through the hooks: one forward, one backward to the captured
        layers' outputs (parameter gradients are not computed, .grad is untouched)."""
        assert self.layers is not None and self._projector is not None
        taps = self._taps
        record = taps.start()
        try:
            with torch.enable_grad():
                f = self._margin(self.model(x), y)
                # edges as the layers made them: an output an inplace activation wrote
                # over since has a newer node, whose gradient is not the layer's δ
                edges = [GradientEdge(node, index) for _, _, _, _, node, index in record.calls]
                grads = torch.autograd.grad(f.sum(), edges, allow_unused=True)
        finally:
            taps.stop()
        return self._projector.phi(*taps.pairs(taps.resolve(record, grads=grads)))

    def features(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, Weights,
                                                                  torch.Tensor]:
        """(φ [n, k], weights, f [n]) at the model's current parameters."""
        x = plain(torch.as_tensor(x))
        y = plain(torch.as_tensor(y))
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        with torch.no_grad():
            f = self._margin(self.model(x), y)
        phi = self._dense_phi(x, y) if self.layers is None else self._factored_phi(x, y)
        return (np.asarray(phi.detach().cpu().numpy(), dtype=np.float32),
                self._weights_of(f.detach().double().cpu().numpy(), y), f)

    def capture(self, x: torch.Tensor, y: torch.Tensor, keys: events_pb2.RowKeys, *,
                learning_rate: float, step: int = 0, reduction: str = "mean",
                featurisation: bool = False) -> events_pb2.GradientBatch | None:
        """Publish the batch's per-sample gradients at the current parameters, with a pass
        of its own (call it before `optimizer.step()`; `step()` instead reuses the training
        step's backward). `learning_rate` is the optimiser's; with a mean-reduced loss each
        sample's step is lr / batch size, which is what is recorded."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
        phi, weights, _ = self.features(x, y)
        per_sample = learning_rate / len(phi) if reduction == "mean" else learning_rate
        return self.publish_gradients(phi, weights, keys, learning_rate=per_sample, step=step,
                                      targets=torch.as_tensor(y).detach().cpu().numpy(),
                                      featurisation=featurisation)

    def step(self, x: torch.Tensor, y: torch.Tensor, keys: events_pb2.RowKeys, *,
             learning_rate: float, step: int = 0) -> AbstractContextManager[None]:
        """Capture the training step run inside the block: call the model once on x and
        backward the loss (softmax / binary cross-entropy with logits or squared error,
        mean or sum); call `optimizer.step()` after the block. Factored: φ comes from the
        hooks on this backward, rescaled from loss to margin gradients; dense: from a vmap
        pass at entry. The recorded per-sample learning rate is lr x c, the loss's measured
        per-row scale (1/B for a mean). With a Background/ProcessPublisher, the projection and the
        event are computed on its worker after the first step (a refused loss is then raised
        at flush); the trainer's thread keeps only the hooks and the margins."""
        return _Step(self, x, y, keys, learning_rate, step)

    def _begin(self, x: Any, y: Any, keys: events_pb2.RowKeys
               ) -> tuple[torch.Tensor, torch.Tensor, events_pb2.RowKeys,
                          torch.Tensor | None, OutputGradient, Record]:
        """step()'s entry: checked inputs, the dense φ (dense mode), the taps installed."""
        x = plain(x if isinstance(x, torch.Tensor) else torch.as_tensor(x))
        y = plain(y if isinstance(y, torch.Tensor) else torch.as_tensor(y))
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        keys = _keys(keys, x.shape[0])
        dense = self._dense_phi(x, y) if self.layers is None else None
        state = OutputGradient(self.task, y)
        return x, y, keys, dense, state, self._taps.start(self.model, watch(state))

    def _end(self, x: torch.Tensor, y: torch.Tensor, keys: events_pb2.RowKeys,
             dense: torch.Tensor | None, state: OutputGradient, record: Record,
             learning_rate: float, step: int) -> None:
        """step()'s exit after a block that finished: the step held or published."""
        self._check(x, state)
        calls = self._taps.resolve(record, state.grad)
        version = self._require_version()
        self.last_step = max(self.last_step, step)
        # Held for the worker (a group): only after a first step here, which refuses a wrong
        # loss where the trainer sees it, and when no row can need a margin pass (it reads
        # the parameters, which the optimiser is about to change): a row whose loss
        # gradient is below 1e-25 everywhere might, and goes the synchronous way below.
        if (dense is None and self._scales.value is not None and self._grouped
                and state.floor() >= CERTAIN):
            if self._open_ring is not None:  # a worker process: copied into its ring
                if self._hold_in_ring(calls, state, y, keys, learning_rate, step, version):
                    return
            else:
                self._hold(x, y, state, calls, keys, learning_rate, step, version)
                return
        taken = self._taps.pairs(calls)
        f = margins(state.output.detach().cpu().double().numpy(),  # type: ignore[union-attr]
                    y.detach().cpu().double().numpy(), self.task)
        weights = self._weights_of(f, y)
        targets = y.detach().cpu().numpy()

        def build() -> events_pb2.GradientBatch:
            phi, c = self._phi_of_step(x, y, state, weights, taken, dense)
            return self.gradient_batch(phi, weights, keys, learning_rate=learning_rate * c,
                                       step=step, version=version, targets=targets)

        lost = bool((np.abs(weights.q) < TINY).any())
        if dense is not None or lost or self._scales.value is None:
            payload = build()
            self._emit(lambda: payload)
        else:
            self._emit(build)

    def _emit(self, build: Any) -> Any:
        """Any event of this capture follows the steps held back before it."""
        self._drain()
        return super()._emit(build)

    def _hold(self, x: torch.Tensor, y: torch.Tensor, state: OutputGradient,
              calls: list[tuple[int, Any, Any]], keys: events_pb2.RowKeys,
              learning_rate: float, step: int, version: str) -> None:
        """Keep the step (references, and copies of the batch and labels, which the trainer
        may refill) for the worker thread's group."""
        state.labels = y.clone()
        self._pending.append(_Held(x.clone(), x.data_ptr(), state.labels, state, calls,
                                   keys, learning_rate, step, version))
        if len(self._pending) >= self.group:
            self._drain()

    def _hold_in_ring(self, calls: list[tuple[int, Any, Any]], state: OutputGradient,
                      y: torch.Tensor, keys: events_pb2.RowKeys, learning_rate: float,
                      step: int, version: str) -> bool:
        """Copy the step's (a, δ) per layer call, output, its gradient and the labels into
        the worker process's ring (the trainer waits while it is full); False when the
        step does not fit a slot (sized by the first step held), which then goes the
        synchronous way."""
        tensors = [plain(t) for _, a, g in calls for t in (a, g)]  # a TrackedTensor: no op
        tensors += [state.output, state.grad, y]
        if self._ring is None:
            need = slot_bytes_for(tensors)
            if need is None:  # a dtype the ring cannot carry: the synchronous way
                return False
            self._ring = RingSlots(self._open_ring(self._worker_config(), need))
        if self._pending and self._ring.writer.full():
            self._drain()  # a ring smaller than a group: the worker must have what it holds
        placed = self._ring.put(tensors)
        if placed is None:
            return False
        self._pending.append((*placed, [i for i, _, _ in calls], keys, learning_rate, step,
                              version, self._scales.value))
        if len(self._pending) >= self.group:
            self._drain()
        return True

    def _worker_config(self) -> dict[str, Any]:
        """What a worker process needs to build this capture's events (worker.child)."""
        assert self.layers is not None and self._projector is not None
        layers = []
        for la in self.layers:
            m = la.module
            dtype = str(m.weight.dtype).removeprefix("torch.")
            kind: tuple[Any, ...] = (
                ("linear", dtype, m.in_features, m.out_features)
                if isinstance(m, torch.nn.Linear)
                else ("conv2d", dtype, m.in_channels, m.out_channels, m.kernel_size, m.stride,
                      m.padding, m.dilation))
            layers.append((la.name, kind, la.bias, la.rows, la.cols, la.parameters))
        return {"layers": layers, "kronecker": self._projector.spec,
                "projection": self.projection, "model_id": self.model_id, "task": self.task,
                "dtype": self.dtype, "threads": torch.get_num_threads()}

    def _drain(self) -> None:
        """Submit the held steps as one job for the publisher's worker."""
        held, self._pending = self._pending, []
        if not held:
            return
        if self._ring is not None:
            self._ring.writer.send(held)
        else:
            super()._emit(lambda: self._build_group(held))  # type: ignore[arg-type,return-value]

    def _build_group(self, held: list[_Held]) -> list[events_pb2.GradientBatch | Exception]:
        """The GradientBatch of every held step, projected together (on the worker)."""
        assert self._projector is not None
        steps = []
        for h in held:
            try:
                taken: Any = self._taps.pairs(h.calls, copy=(h.pointer, h.x))
            except Exception as exc:  # noqa: BLE001 - the worker raises it at flush
                taken = exc
            steps.append(HeldStep(taken, h.state, h.x, h.keys, h.learning_rate, h.step,
                                  h.version))
        return build_group(self, self._projector, self._scales, steps, self._margin_pass)

    def _check(self, x: torch.Tensor, state: OutputGradient) -> None:
        """Refuse a step whose forward/backward the capture cannot read."""
        if state.errors:
            raise LossMismatch(state.errors[0] + "; or capture with capture.capture(x, y, "
                               "keys, ...) before the step, which runs a pass of its own")
        if state.calls != 1 or state.output is None:
            raise ValueError(f"the model ran {state.calls} times inside capture.step(); run "
                             "it once, on the batch given to step()")
        if state.output.shape[0] != x.shape[0]:
            raise ValueError(f"the model's output has {state.output.shape[0]} rows, the "
                             f"batch {len(x)}")
        if state.grad is None:
            raise RuntimeError("no backward reached the model's output inside "
                               "capture.step(); call loss.backward() inside the with block")

    def _weights_of(self, f: np.ndarray, y: torch.Tensor) -> Weights:
        return weights_of(self.task, f, y)

    def _phi_of_step(self, x: torch.Tensor, y: torch.Tensor, state: OutputGradient,
                     weights: Weights, taken: tuple[dict, dict], dense: torch.Tensor | None
                     ) -> tuple[torch.Tensor, float]:
        """(φ, c) of a step from what its forward and backward left behind."""
        if dense is not None:
            return dense, self._loss_scale(x, state)
        assert self._projector is not None
        c = self._loss_scale(x, state)
        return self._rescaled(x, y, weights, self._projector.phi(*taken), c), c

    def _loss_scale(self, x: torch.Tensor, state: OutputGradient) -> float:
        """c, the loss's per-row scale, measured (or the last measured) and checked."""
        return self._scales.accept(loss_scale(state)[0], len(x))

    def _rescaled(self, x: torch.Tensor, y: torch.Tensor, weights: Weights, phi: torch.Tensor,
                  c: float) -> torch.Tensor:
        """φ of the margins from φ of the step's loss gradients (c: the loss's scale)."""
        r, lost = ratio(c, weights)
        phi /= torch.as_tensor(r, dtype=phi.dtype, device=phi.device)[:, None]
        self._margin_pass(x, y, phi, lost)
        return phi

    def _margin_pass(self, x: torch.Tensor, y: torch.Tensor, phi: torch.Tensor,
                     lost: np.ndarray) -> None:
        """φ's rows whose loss gradient is 0 (certain rows, exact fits), from a margin pass."""
        if lost.any():
            rows = torch.as_tensor(lost.nonzero()[0], device=x.device)
            phi[rows.to(phi.device)] = self._factored_phi(x[rows], y[rows])

    def featurise(self, batches: Any) -> int:
        """Re-compute the gradients of training rows at the current version (FEATURISATION
        events): `batches` yields (x, y, keys). A classifier of more than two classes also
        publishes the rows' full softmax Gauss-Newton factors (CURVATURE rows, see
        `curvature_factors`). Returns the number of rows."""
        rows = 0
        for x, y, keys in batches:
            self.capture(x, y, keys, learning_rate=0.0, featurisation=True)
            factors = self.curvature_factors(x)
            if factors is not None:
                self.publish_curvature(factors[0], factors[1], keys, factors[2],
                                       step=self.last_step)
            rows += len(x)
        return rows

    def curvature_factors(self, x: torch.Tensor, chunk: int = 64
                          ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(φ [n·C, k], w [n·C], C): Σ w φφᵀ is the full softmax Gauss-Newton of the rows,
        Σ_i Jᵢᵀ(diag p − ppᵀ)Jᵢ = Σ_i Σ_c p_c ∇log p_c ∇log p_cᵀ (row i's C factors
        together, projected by the capture's own P); None unless the model is a classifier
        with more than two class logits (the margin's curvature is then exact)."""
        x = plain(torch.as_tensor(x))
        with torch.no_grad():
            out = self.model(x)
        if self.task != "classification" or out.dim() != 2 or out.shape[1] <= 2:
            return None
        classes = out.shape[1]
        named = dict(self.model.named_parameters())
        trained = {n: named[n].detach() for n in self.names}
        frozen = {n: p.detach() for n, p in named.items() if n not in trained}
        frozen.update(dict(self.model.named_buffers()))

        def log_p(tr: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            z = functional_call(self.model, {**frozen, **tr}, (xi.unsqueeze(0),))
            return torch.log_softmax(z[0], dim=-1)

        jac = vmap(jacrev(log_p), in_dims=(None, 0))
        phis = []
        for a in range(0, len(x), chunk):
            grads = jac(trained, x[a:a + chunk])  # name -> [m, C, *shape]
            m = grads[self.names[0]].shape[0]
            dense = torch.cat([grads[n].reshape(m * classes, -1) for n in self.names], 1)
            phis.append(np.asarray(self.projection.project(dense.double().cpu().numpy()),
                                   dtype=np.float32))
        w = torch.softmax(out.double(), dim=-1).reshape(-1).cpu().numpy()
        return np.concatenate(phis), w, classes

    def record_prediction(self, x: torch.Tensor, *, label: int | None = None,
                          prediction_id: str | None = None,
                          input_rows: events_pb2.RowKeys | None = None
                          ) -> events_pb2.PredictionRecorded:
        """PredictionRecorded for one input: the output and φ' of the margin of `label`
        (default: the predicted class) or of the output (regression), projected as the
        training gradients are."""
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
