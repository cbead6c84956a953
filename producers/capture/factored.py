"""Factored per-sample gradients from hooks: each captured layer's input a and output
gradient δ, projected per layer as vec((P_rows δ)(P_cols a)ᵀ) without forming δ aᵀ.

Layers: nn.Linear (inputs [n, ..., d_in]: the extra dimensions are summed over, as for a
sequence) and nn.Conv2d through unfold (groups 1, zero padding given as numbers or "valid":
the per-sample gradient is Σ over output positions of δ_p a_pᵀ with a_p the unfolded patch).
Anything else is refused by name, and the capture falls back to the dense vmap path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Taps:
    """Forward hooks on the captured layers from `start` to `stop` (a model holds no hook of
    ours between passes, so it deep-copies and pickles as before): they keep each layer's
    input a and either its output (a margin pass takes their gradients) or, through a
    tensor hook, its output gradient δ (the training backward)."""

    layers: list[Layer]
    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grads: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    keep_outputs: bool = False

    def start(self, keep_outputs: bool) -> None:
        self.clear()
        self.keep_outputs = keep_outputs
        for layer in self.layers:
            self.handles.append(layer.module.register_forward_hook(self._forward(layer.name)))

    def stop(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def clear(self) -> None:
        """Drop the tensors kept (after φ is computed)."""
        for layer in self.layers:
            self.inputs[layer.name], self.grads[layer.name] = [], []
            self.outputs[layer.name] = []

    def take(self) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
        """(inputs, grads) kept so far, handed over; the taps start afresh."""
        taken = dict(self.inputs), dict(self.grads)
        self.clear()
        return taken

    def _forward(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.inputs[name].append(plain(args[0]).detach())
            if self.keep_outputs:
                self.outputs[name].append(out)
            elif out.requires_grad:
                grads = self.grads[name]
                grads.append(out)  # placeholder, replaced by its gradient
                slot = len(grads) - 1

                def grab(g: torch.Tensor) -> None:
                    grads[slot] = g.detach()

                out.register_hook(grab)
        return hook


class Projector:
    """The factor matrices of a projection as tensors (transposed: P_rowsᵀ, P_colsᵀ with the
    bias column's row last), and φ from (a, δ) pairs."""

    def __init__(self, layers: list[Layer], spec: KroneckerProjection | None) -> None:
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
            side_rows, side_cols = spec.sides(i)
            weight: torch.Tensor = layer.module.weight  # type: ignore[assignment]
            dtype, device = weight.dtype, weight.device
            self.matrices.append(tuple(  # type: ignore[arg-type]
                None if side.kind == "identity"
                else torch.as_tensor(side.columns().T.copy(), dtype=dtype, device=device)
                for side in (side_rows, side_cols)))

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
                  ) -> list[torch.Tensor]:
        """φ of several steps (each as Taps.take() handed it over) with one product per
        layer and factor for the whole group: the rows of all steps are stacked, so a
        small model pays the matmul dispatch once per group instead of once per step.
        Steps where a layer ran other than once, or with differing shapes, go one by one."""
        sizes = [grads[self.layers[0].name][0].shape[0] if grads[self.layers[0].name] else 0
                 for _, grads in taken]
        stackable = all(
            len(ins[la.name]) == 1 and len(grads[la.name]) == 1
            and not grads[la.name][0].requires_grad
            and ins[la.name][0].shape[1:] == taken[0][0][la.name][0].shape[1:]
            and grads[la.name][0].shape[0] == n
            for (ins, grads), n in zip(taken, sizes, strict=True) for la in self.layers)
        if len(taken) == 1 or not stackable:
            return [self.phi(*t) for t in taken]
        stacked_ins = {la.name: [torch.cat([ins[la.name][0] for ins, _ in taken])]
                       for la in self.layers}
        stacked_grads = {la.name: [torch.cat([grads[la.name][0] for _, grads in taken])]
                         for la in self.layers}
        return list(self.phi(stacked_ins, stacked_grads).split(sizes))

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
