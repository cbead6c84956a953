"""Factored per-sample gradients from hooks: each captured layer's input a and output
gradient δ, projected per layer as vec((P_rows δ)(P_cols a)ᵀ) without forming δ aᵀ.

Layers: nn.Linear (inputs [n, ..., d_in]: the extra dimensions are summed over, as for a
sequence) and nn.Conv2d through unfold (groups 1, zero padding given as numbers or "valid":
the per-sample gradient is Σ over output positions of δ_p a_pᵀ with a_p the unfolded patch).
Anything else is refused by name, and the capture falls back to the dense vmap path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from headwater.producers.capture.kronecker import KroneckerProjection


@dataclass
class Layer:
    """A captured module: its name, whether its bias is captured, the gradient's shape."""

    name: str
    module: nn.Module
    bias: bool
    rows: int  # output features / channels
    cols: int  # input features (x kernel area), +1 with the bias
    parameters: list[str]


def _refusal(module: nn.Module) -> str:
    """Why the factored path cannot take this module ("" when it can)."""
    if isinstance(module, nn.Linear):
        return ""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"Conv2d with groups={module.groups}"
        if module.padding_mode != "zeros":
            return f"Conv2d with padding_mode={module.padding_mode!r}"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"Conv2d with padding={module.padding!r}"
        return ""
    return type(module).__name__


def find_layers(model: nn.Module, names: list[str]) -> tuple[list[Layer], list[str]]:
    """The captured layers owning the selected parameters `names`, in model order, and
    'name (reason)' for every module the factored path cannot take."""
    chosen = set(names)
    layers: list[Layer] = []
    refused: list[str] = []
    for mod_name, module in model.named_modules():
        own = [(f"{mod_name}.{p}" if mod_name else p) for p, _ in
               module.named_parameters(recurse=False)]
        picked = [p for p in own if p in chosen]
        if not picked:
            continue
        label = mod_name or type(module).__name__
        reason = _refusal(module)
        weight = f"{mod_name}.weight" if mod_name else "weight"
        if not reason and weight not in picked:
            reason = "bias captured without its weight"
        if reason:
            refused.append(f"{label} ({reason})")
            continue
        bias = len(picked) == 2
        w = module.weight
        rows, cols = w.shape[0], w[0].numel()
        layers.append(Layer(mod_name, module, bias, rows, cols + bias,
                            [weight] + ([p for p in picked if p != weight] if bias else [])))
    return layers, refused


def plain(t: torch.Tensor) -> torch.Tensor:
    """t as a plain tensor (a TrackedTensor's maths here must not be recorded as ops)."""
    return t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _unfold(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Conv2d input [n, C, H, W] -> patches [n, positions, C * kh * kw]."""
    padding: Any = 0 if module.padding == "valid" else module.padding
    cols = nn.functional.unfold(x, module.kernel_size, dilation=module.dilation,
                                padding=padding, stride=module.stride)
    return cols.transpose(1, 2)


def _as_rows(layer: Layer, a: torch.Tensor, delta: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a [n, T, in], δ [n, T, out]) with T the positions summed over."""
    n = delta.shape[0]
    if isinstance(layer.module, nn.Conv2d):
        return _unfold(layer.module, a), delta.reshape(n, delta.shape[1], -1).transpose(1, 2)
    return a.reshape(n, -1, a.shape[-1]), delta.reshape(n, -1, delta.shape[-1])


OWN = object()  # a record's mark: this output is the model's, its δ the corrected loss gradient


@dataclass
class Record:
    """What the taps saw in one pass, read once the backward is done (on the publisher's
    worker for a held step): per layer call (layer index, input a, output, the output's
    version and node and output number at the time), and marks by call: OWN, or a
    one-item list a node hook fills (an output written in place during the forward)."""

    calls: list[tuple[int, Any, Any, int, Any, int]] = field(default_factory=list)
    marks: dict[int, Any] = field(default_factory=dict)


class Taps:
    """Taps on the captured layers, installed from `start` to `stop` as instance `forward`
    attributes that call the layer's own (the model holds nothing of ours between passes, so
    it deep-copies and pickles as before; an attribute costs less than a forward hook's
    dispatch). They record each layer's input a and output; in a training step the root's
    tap then marks the outputs so that the backward leaves their gradients δ without a
    Python call (retain_grad), except the model's output, whose δ is the corrected loss
    gradient the output hook keeps. Reading the record (`pairs`) is left for later."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.record = Record()
        self.installed: list[tuple[nn.Module, Any]] = []
        self._on_output: Callable[[Any], Any] = _same
        self._inner: list[Callable[..., Any]] = [_same] * len(layers)  # the layers' own
        self._root_forward: Callable[..., Any] = _same
        self._taps = [self._tap(i) for i in range(len(layers))]
        self._rooted = self._root()

    def start(self, root: nn.Module | None = None,
              on_output: Callable[[Any], Any] | None = None) -> Record:
        """Install the taps (and, with `root`, pass the model's output to `on_output`, which
        returns it, then mark the recorded outputs for their gradients); a fresh record."""
        self.record = Record()
        for i, layer in enumerate(self.layers):
            self._inner[i] = self._install(layer.module, self._taps[i])
        if root is not None and on_output is not None:
            self._on_output = on_output
            self._root_forward = self._install(root, self._rooted)
        return self.record

    def stop(self) -> None:
        """Put back every forward as it was (in reverse: a root that is a layer too)."""
        for module, previous in reversed(self.installed):
            if previous is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous
        self.installed.clear()
        self._on_output = _same

    def _install(self, module: nn.Module, tap: Callable[..., Any]) -> Callable[..., Any]:
        """Put `tap` in place of module.forward; returns the forward it calls."""
        previous = module.__dict__.get("forward")
        self.installed.append((module, previous))
        module.__dict__["forward"] = tap
        return previous or type(module).forward.__get__(module)

    def _tap(self, i: int) -> Callable[..., Any]:
        inner = self._inner

        def tapped(*args: Any, **kwargs: Any) -> Any:
            out = inner[i](*args, **kwargs)
            self.record.calls.append((i, args[0], out, out._version, out.grad_fn,
                                      out.output_nr))
            return out

        return tapped

    def _root(self) -> Callable[..., Any]:
        def rooted(*args: Any, **kwargs: Any) -> Any:
            out = self._on_output(self._root_forward(*args, **kwargs))
            marks = self.record.marks
            for j, (_, _, o, version, node, index) in enumerate(self.record.calls):
                if o is out:
                    marks[j] = OWN
                elif not o.requires_grad:
                    continue
                elif o._version == version:
                    o.retain_grad()
                else:  # written in place (an inplace activation): hook the node that made it
                    cell: list[Any] = [None]
                    marks[j] = cell
                    node.register_prehook(partial(_keep, cell, index))
            return out

        return rooted

    def resolve(self, record: Record, output_grad: torch.Tensor | None = None,
                grads: Sequence[torch.Tensor | None] | None = None
                ) -> list[tuple[int, Any, Any]]:
        """(layer index, input a, δ) per layer call of a finished training step
        (`output_grad`: the model output's corrected gradient) or of a margin pass (`grads`:
        its outputs' gradients in call order; None: 0, that output does not reach f). Only
        references are read (the outputs themselves are let go); raises when a layer's δ
        never arrived."""
        got = []
        for j, (i, a, out, _, _, _) in enumerate(record.calls):
            if grads is not None:
                g = grads[j]
                g = torch.zeros_like(out) if g is None else g
            else:
                mark = record.marks.get(j)
                g = (output_grad if mark is OWN else mark[0] if mark is not None
                     else out.grad if out.requires_grad else None)
            if g is None:
                raise RuntimeError(f"layer {self.layers[i].name!r}: its output gradient never "
                                   "arrived; call loss.backward() inside capture.step()")
            got.append((i, a, g))
        return got

    def pairs(self, calls: list[tuple[int, Any, Any]], copy: Any = None
              ) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
        """(inputs, δ) per layer name, plain and detached, from `resolve`'s calls.
        `copy`: (pointer, tensor): an input at that data pointer is replaced by the tensor
        (the caller's batch, copied before the trainer could refill it)."""
        inputs: dict[str, list[torch.Tensor]] = {la.name: [] for la in self.layers}
        deltas: dict[str, list[torch.Tensor]] = {la.name: [] for la in self.layers}
        for i, a, g in calls:
            name = self.layers[i].name
            a = plain(a)
            if copy is not None and a.data_ptr() == copy[0]:
                a = copy[1]
            inputs[name].append(a.detach())
            deltas[name].append(plain(g).detach())
        return inputs, deltas


def _same(out: Any) -> Any:
    return out


def _keep(cell: list[Any], index: int, grad_outputs: tuple[torch.Tensor, ...]) -> None:
    cell[0] = grad_outputs[index]


class Projector:
    """The factor matrices of a projection as tensors (transposed: P_rowsᵀ, P_colsᵀ with the
    bias column's row last), and φ from (a, δ) pairs."""

    def __init__(self, layers: list[Layer], spec: KroneckerProjection | None,
                 device: torch.device | None = None) -> None:
        """`device`: where the matrices live (default: each layer's weight's)."""
        self.layers, self.spec = layers, spec
        self.matrices: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for i, layer in enumerate(layers):
            if spec is None:  # identity: the gradient itself, in parameter order
                self.matrices.append((None, None))
                continue
            f = spec.factors[i]
            if (f.layer, f.rows, f.cols, f.bias) != (layer.name, layer.rows, layer.cols,
                                                      layer.bias):
                raise ValueError(f"projection factor {f} does not match layer {layer.name!r}")
            weight: torch.Tensor = layer.module.weight  # type: ignore[assignment]
            dtype, on = weight.dtype, device or weight.device
            self.matrices.append(tuple(  # type: ignore[arg-type]
                None if k == dim
                else torch.as_tensor(m.T.copy(), dtype=dtype, device=on)
                for m, k, dim in zip(spec.matrices(i), (f.k_rows, f.k_cols),
                                     (f.rows, f.cols), strict=True)))

    def phi(self, inputs: dict[str, list[torch.Tensor]],
            grads_of: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """φ [n, k] from the (a, δ) pairs Taps.take() hands over (several per layer when a
        layer ran several times: their gradients add)."""
        blocks: list[torch.Tensor] = []
        with torch.no_grad():
            for layer, (p_rows, p_cols) in zip(self.layers, self.matrices, strict=True):
                ins, grads = inputs[layer.name], grads_of[layer.name]
                if not ins:
                    raise RuntimeError(f"layer {layer.name!r} did not run in the forward pass")
                if len(grads) != len(ins) or any(g.requires_grad for g in grads):
                    raise RuntimeError(f"layer {layer.name!r}: its output gradient never "
                                       "arrived; call loss.backward() inside capture.step()")
                total = self._layer(layer, ins[0], grads[0], p_rows, p_cols)
                for a, delta in zip(ins[1:], grads[1:], strict=True):
                    total = total + self._layer(layer, a, delta, p_rows, p_cols)
                blocks.append(total)
        return torch.cat(blocks, dim=1)

    def phi_group(self, taken: list[tuple[dict[str, list[torch.Tensor]],
                                          dict[str, list[torch.Tensor]]]]
                  ) -> tuple[torch.Tensor, list[int]]:
        """φ of several steps (each as Taps.take() handed it over), stacked, and each step's
        row count: one product per layer and factor for the whole group (the rows of all
        steps stacked), so a small model pays the matmul dispatch once per group instead of
        once per step. Steps where a layer ran other than once, or with differing shapes,
        are projected one by one."""
        sizes = [grads[self.layers[0].name][0].shape[0] if grads[self.layers[0].name] else 0
                 for _, grads in taken]
        stackable = all(
            len(ins[la.name]) == 1 and len(grads[la.name]) == 1
            and not grads[la.name][0].requires_grad
            and ins[la.name][0].shape[1:] == taken[0][0][la.name][0].shape[1:]
            and grads[la.name][0].shape[0] == n
            for (ins, grads), n in zip(taken, sizes, strict=True) for la in self.layers)
        if len(taken) == 1 or not stackable:
            phis = [self.phi(*t) for t in taken]
            return (phis[0] if len(phis) == 1 else torch.cat(phis)), [len(p) for p in phis]
        stacked_ins = {la.name: [torch.cat([ins[la.name][0] for ins, _ in taken])]
                       for la in self.layers}
        stacked_grads = {la.name: [torch.cat([grads[la.name][0] for _, grads in taken])]
                         for la in self.layers}
        return self.phi(stacked_ins, stacked_grads), sizes

    @staticmethod
    def _layer(layer: Layer, a: torch.Tensor, delta: torch.Tensor, p_rows: torch.Tensor | None,
               p_cols: torch.Tensor | None) -> torch.Tensor:
        a, d = _as_rows(layer, a, delta)
        n = d.shape[0]
        if p_rows is None and p_cols is None:  # identity: [vec(Σ δ aᵀ), Σ δ]
            w = (d.transpose(1, 2) @ a).reshape(n, -1)
            return torch.cat([w, d.sum(1)], dim=1) if layer.bias else w
        pd = d if p_rows is None else d @ p_rows
        if p_cols is None:
            pa = torch.cat([a, a.new_ones(a.shape[:2] + (1,))], dim=2) if layer.bias else a
        elif layer.bias:  # [a, 1] @ P_colsᵀ without the concatenation
            pa = torch.addmm(p_cols[-1], a.reshape(-1, a.shape[-1]), p_cols[:-1]).reshape(
                n, a.shape[1], -1)
        else:
            pa = a @ p_cols
        if pd.shape[1] == 1:
            return (pd[:, 0, :, None] * pa[:, 0, None, :]).reshape(n, -1)
        return (pd.transpose(1, 2) @ pa).reshape(n, -1)
