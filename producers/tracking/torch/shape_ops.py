"""Row-map rules of torch's joining, splitting and shape ops: cat/stack/vstack/hstack/
column_stack/dstack, split/chunk/tensor_split/unbind/..., reshape/view/flatten/squeeze/
unsqueeze, expand/broadcast_to, permute/transpose/movedim/.T, flip, roll,
repeat_interleave, repeat/tile, diff. Registered with `registry.rule("torch", ...)`."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from headwater.producers.tracking.maps import (
    NotUnderstood,
    json_axis,
    operand_segment,
    reshape_segments,
    stacked_segments,
)
from headwater.producers.tracking.moves import flat_roll_segments, tile_segments, window_segments
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import (
    ROWS_MOVED,
    Segments,
    all_rows,
    broadcast,
    identity,
    n_rows,
    range_segment,
    rows_segments,
)
from headwater.producers.tracking.torch.tensor import (
    MOVES,
    REDUCTIONS,
    STARTS,
    Call,
    Spec,
    Tensor,
    as_numpy,
    one_input,
    op_name,
    shape_of,
)


def _pieces(call: Call) -> list[Any]:
    pieces = call.arg(0, "tensors")
    return list(pieces)


def _side_by_side(call: Call, pieces: list[Any], n_out: int) -> Segments:
    """Pieces joined along another dim: each keeps the output's rows (a 0-d piece or a
    1-D piece promoted to a column: see the callers)."""
    segments: Segments = []
    seen: set[int] = set()
    for piece in pieces:
        i = call.input_of(piece)
        shape = shape_of(piece)
        if i is None or i in seen or n_out == 0 or shape == (0,):
            continue
        seen.add(i)
        if not shape:
            segments.append(broadcast(i, 0, n_out))
        elif shape[0] == n_out:
            segments.append(identity(i, n_out))
        else:
            raise NotUnderstood
    return segments


@rule("torch", "cat concat concatenate", spaces="torch")
def _cat(call: Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    dim = int(call.arg(1, "dim", call.kwargs.get("axis", 0)))
    n_out = n_rows(shape_of(outs[0]))
    nd = outs[0].ndim
    if dim % nd == 0:  # legacy: 1-D empty pieces are skipped whatever the dim
        blocks = [(p, shape_of(p)[0], True) for p in pieces if shape_of(p) != (0,) or nd == 1]
        return stacked_segments(call, blocks, n_out), True, json_axis(dim)
    return _side_by_side(call, pieces, n_out), True, json_axis(dim)


@rule("torch", "stack", spaces="torch")
def _stack(call: Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    dim = int(call.arg(1, "dim", 0))
    n_out = n_rows(shape_of(outs[0]))
    if dim % outs[0].ndim == 0:  # piece p becomes output row p
        return stacked_segments(call, [(p, 1, p.ndim == 0) for p in pieces], n_out), True, \
            json_axis(dim)
    return _side_by_side(call, pieces, n_out), True, json_axis(dim)


@rule("torch", "vstack row_stack", spaces="torch")
def _vstack(call: Call, outs: list[Any]) -> Spec:
    """>= 2-D pieces keep their rows; a 1-D piece is one row holding all its rows."""
    pieces = _pieces(call)
    blocks = [(p, p.shape[0] if p.ndim >= 2 else 1, p.ndim != 1) for p in pieces]
    return stacked_segments(call, blocks, n_rows(shape_of(outs[0]))), True, '{"axis": 0}'


@rule("torch", "hstack", spaces="torch")
def _hstack(call: Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    n_out = n_rows(shape_of(outs[0]))
    if all(p.ndim <= 1 for p in pieces):  # joined along rows
        blocks = [(p, n_rows(shape_of(p)), True) for p in pieces]
        return stacked_segments(call, blocks, n_out), True, '{"axis": 0}'
    return _side_by_side(call, pieces, n_out), True, '{"axis": 1}'


@rule("torch", "column_stack", spaces="torch")
def _column_stack(call: Call, outs: list[Any]) -> Spec:
    """1-D pieces become columns: they keep the rows."""
    return _side_by_side(call, _pieces(call), n_rows(shape_of(outs[0]))), True, '{"axis": 1}'


@rule("torch", "dstack", spaces="torch")
def _dstack(call: Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    n_out = n_rows(shape_of(outs[0]))
    if any(p.ndim == 1 for p in pieces):  # (n,) -> (1, n, 1): one row holding all
        if n_out != 1:
            raise NotUnderstood
        segments = [all_rows(i, 1, "stacked as one row") for i in
                    dict.fromkeys(call.input_of(p) for p in pieces) if i is not None]
        return segments, True, '{"axis": 2}'
    return _side_by_side(call, pieces, n_out), True, '{"axis": 2}'


@rule("torch", """split split_with_sizes unsafe_split chunk tensor_split
          vsplit hsplit dsplit unbind""", spaces="torch Tensor")
def _split(call: Call, outs: list[Any]) -> list[Spec]:
    """split / chunk / tensor_split / vsplit / hsplit / dsplit / unbind: one spec per part."""
    x = call.x()
    nd = x.ndim
    name = call.name.rsplit(".", 1)[-1]
    if name == "vsplit":
        dim = 0
    elif name == "hsplit":
        dim = 1 if nd > 1 else 0
    elif name == "dsplit":
        dim = 2
    elif name == "unbind":
        dim = int(call.arg(1, "dim", 0))
    else:
        dim = int(call.arg(2, "dim", 0))
    i = call.input_of(x)
    sizes = [n_rows(shape_of(o)) for o in outs]
    if i is None or nd == 0 or dim % nd != 0:
        return [([identity(i, n)] if i is not None and n else [], True,
                 json.dumps({"dim": dim, "part": p})) for p, n in enumerate(sizes)]
    if name == "unbind":  # part p is row p
        return [([broadcast(i, p, n)] if n else [], True, json.dumps({"dim": 0, "part": p}))
                for p, n in enumerate(sizes)]
    sections = call.arg(1, "indices_or_sections", call.kwargs.get(
        "indices", call.kwargs.get("sections", call.kwargs.get("split_size_or_sections"))))
    n_in = x.shape[0]
    if name in ("tensor_split", "vsplit", "hsplit", "dsplit") and isinstance(
            sections, (list, tuple, Tensor)) and np.ndim(as_numpy(sections)) == 1:
        bounds = [0, *(int(b) for b in as_numpy(sections)), n_in]  # python slice semantics
        starts = [range(*slice(a, b).indices(n_in)).start
                  for a, b in zip(bounds, bounds[1:], strict=False)]
    else:
        starts = list(np.cumsum([0, *sizes[:-1]]))
    return [([range_segment(i, int(s), 1, n)] if n else [], True,
             json.dumps({"dim": 0, "part": p, "start": int(s)}))
            for p, (s, n) in enumerate(zip(starts, sizes, strict=True))]


# -- shape ops ----------------------------------------------------------------------------


@rule("torch", """reshape view flatten unflatten ravel view_as
          reshape_as squeeze unsqueeze atleast_1d atleast_2d atleast_3d""", spaces="torch Tensor")
def _reshape(call: Call, outs: list[Any]) -> Spec:
    """C-order reshapes (view, flatten, squeeze, unsqueeze, ...): NumPy's row maps."""
    x = call.x()
    for a in call.args[1:]:
        call.select(a)  # view_as / reshape_as: the other tensor gives the shape
    in_shape, out_shape = shape_of(x), shape_of(outs[0])
    if any(isinstance(a, torch.dtype) for a in call.args[1:]) or "dtype" in call.kwargs:
        if len(in_shape) < 2 or in_shape[0] != out_shape[0]:
            raise NotUnderstood  # a dtype view of a 1-D tensor regroups elements
        return one_input(call, outs, lambda i, n: [identity(i, n)])
    return one_input(call, outs, lambda i, n: reshape_segments(i, in_shape, out_shape),
                json.dumps({"shape": list(out_shape)}))


@rule("torch", "expand expand_as broadcast_to broadcast_tensors", spaces="torch Tensor")
def _expand(call: Call, outs: list[Any]) -> Spec | list[Spec]:
    """expand / expand_as / broadcast_to / broadcast_tensors: broadcasting."""
    if op_name(call.func).endswith("broadcast_tensors"):
        return [one_of(call, piece, out) for piece, out in zip(call.args, outs, strict=True)]
    for a in call.args[1:]:
        call.select(a)
    return one_of(call, call.x(), outs[0])


def one_of(call: Call, piece: Any, out: Any) -> Spec:
    i = call.input_of(piece)
    seg = operand_segment(i, shape_of(piece), shape_of(out)) if i is not None else None
    return ([seg] if seg is not None else []), True, "{}"


def _varargs(call: Call, name: str) -> list[int]:
    """Dims given as varargs (x.permute(1, 0)), a sequence, or a keyword."""
    rest = call.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = tuple(rest[0])
    if not rest:
        value = call.kwargs.get(name, ())
        rest = tuple(value) if isinstance(value, (list, tuple, torch.Size)) else (value,)
    return [int(d) for d in rest]


@rule("torch", """permute transpose swapaxes swapdims t movedim
          moveaxis adjoint""", spaces="torch Tensor",
      note="rows moved off dim 0 stay element-level until used: round trips are identity")
def _permute(call: Call, outs: list[Any]) -> Spec:
    """Axis permutations: rows stay when output dim 0 is input dim 0, else all rows."""
    x = call.x()
    nd = x.ndim
    name = call.name.rsplit(".", 1)[-1]
    if nd <= 1:
        source = 0
    elif name == "permute":
        source = _varargs(call, "dims")[0] % nd
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = (int(call.arg(k, n)) % nd for k, n in ((1, "dim0"), (2, "dim1")))
        source = d1 if d0 == 0 else d0 if d1 == 0 else 0
    elif name == "t":
        source = 1
    elif name == "T":
        source = nd - 1
    elif name in ("mT", "mH", "adjoint"):
        source = 1 if nd == 2 else 0
    else:  # movedim / moveaxis: probe on a meta tensor where dim 0 lands
        probe = torch.empty(tuple(range(2, nd + 2)), device="meta")  # dim d has size d + 2
        source = int(call.func(probe, *call.args[1:], **call.kwargs).shape[0]) - 2
    if source == 0:
        return one_input(call, outs, lambda i, n: [identity(i, n)])
    return one_input(call, outs, lambda i, n: [all_rows(i, n, ROWS_MOVED)])


rule("torch", "T mT mH", spaces="Tensor", properties=True,
     note="rows moved off dim 0 stay element-level until used: round trips are identity"
     )(_permute)


def _funcs(names: str, spaces: tuple[Any, ...], properties: bool = False) -> set[Any]:
    found = set()
    for ns in spaces:
        for n in names.split():
            f = getattr(ns, n, None)
            if f is not None:
                found.add(f.__get__ if properties else f)
    return found


# pending stretches (tracking/pending.py): these start one when rows leave dim 0 ...
STARTS.update(_funcs("permute transpose swapaxes swapdims t movedim moveaxis adjoint",
                     (torch, Tensor)), _funcs("T mT mH", (Tensor,), properties=True))
REDUCTIONS.update(_funcs("sum mean std var prod amax amin nansum nanmean logsumexp",
                         (torch, Tensor)))
# ... and these keep it (applied to the element ids)
MOVES.update(STARTS, _funcs("reshape view flatten unflatten ravel squeeze unsqueeze flip "
                            "contiguous clone __getitem__ narrow", (torch, Tensor)))


@rule("torch", "flip flipud fliplr", spaces="torch Tensor")
def _flip(call: Call, outs: list[Any]) -> Spec:
    x = call.x()
    name = call.name.rsplit(".", 1)[-1]
    dims = [0] if name == "flipud" else [1] if name == "fliplr" else _varargs(call, "dims")
    if x.ndim and any(d % x.ndim == 0 for d in dims):
        return one_input(call, outs, lambda i, n: [range_segment(i, n - 1, -1, n)],
                    json.dumps({"dims": dims}))
    return one_input(call, outs, lambda i, n: [identity(i, n)], json.dumps({"dims": dims}))


@rule("torch", "roll", spaces="torch Tensor")
def _roll(call: Call, outs: list[Any]) -> Spec:
    x = call.x()
    shifts, dims = call.arg(1, "shifts"), call.arg(2, "dims")
    nd = x.ndim
    if nd == 0:
        return one_input(call, outs, lambda i, n: [identity(i, n)])
    if dims is None or dims == ():
        if nd > 1:  # the flattened elements move: rows straddle two neighbours
            flat = int(np.sum(np.asarray(shifts)))
            return one_input(call, outs, lambda i, n: flat_roll_segments(
                i, shape_of(x), flat), json.dumps({"shift": flat, "dim": None}))
        dims = (0,)
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    shifts = shifts if isinstance(shifts, (tuple, list)) else (shifts,) * len(dims)
    total = sum(int(s) for d, s in zip(dims, shifts, strict=True) if int(d) % nd == 0)

    def segments(i: int, n: int) -> Segments:
        s = total % n
        if s == 0:
            return [identity(i, n)]  # out row r <- (r - s) mod n
        return [range_segment(i, n - s, 1, s), range_segment(i, 0, 1, n - s, out_start=s)]
    return one_input(call, outs, segments, json.dumps({"shift": total, "dim": 0}))


@rule("torch", "repeat_interleave", spaces="torch Tensor")
def _repeat_interleave(call: Call, outs: list[Any]) -> Spec:
    x, repeats, dim = call.x(), call.arg(1, "repeats"), call.arg(2, "dim")
    if repeats is None:
        raise NotUnderstood  # repeat_interleave(counts): indices
    call.select(repeats)
    shape = shape_of(x)
    if dim is not None and shape and int(dim) % len(shape) != 0:
        return one_input(call, outs, lambda i, n: [identity(i, n)], json_axis(dim))
    if dim is None:  # flattened first: element e belongs to row e // k
        size = math.prod(shape)
        base = np.arange(size, dtype=np.int64) // max(1, size // n_rows(shape))
    else:
        base = np.arange(n_rows(shape), dtype=np.int64)
    rows = np.repeat(base, as_numpy(repeats))
    return one_input(call, outs, lambda i, n: rows_segments(i, rows), json_axis(dim))


@rule("torch", "repeat tile", spaces="torch Tensor")
def _tile(call: Call, outs: list[Any]) -> Spec:
    """x.repeat(*sizes) / torch.tile(x, dims): NumPy's tile."""
    x = call.x()
    tile = call.name.endswith("tile")
    sizes = _varargs(call, "dims" if tile else "repeats")
    # one map with np.tile (moves.tile_segments): reps padded to the rank, extra leading
    # reps make each output row hold every row
    return one_input(call, outs, lambda i, n: tile_segments(i, shape_of(x), sizes, n),
                     json.dumps({"repeats": sizes}))


@rule("torch", "narrow narrow_copy", spaces="torch Tensor")
def _narrow(call: Call, outs: list[Any]) -> Spec:
    """x.narrow(dim, start, length): a slice of rows when dim is 0."""
    x = call.x()
    dim, start = int(call.arg(1, "dim")), call.arg(2, "start")
    if isinstance(start, Tensor):
        start = int(start.item())
    nd = x.ndim
    if nd and dim % nd == 0:
        first = int(start) % x.shape[0] if x.shape[0] else 0
        return one_input(call, outs, lambda i, n: [range_segment(i, first, 1, n)],
                         json.dumps({"dim": 0, "start": first}))
    return one_input(call, outs, lambda i, n: [identity(i, n)], json_axis(dim))


@rule("torch", "unfold", spaces="Tensor")
def _unfold(call: Call, outs: list[Any]) -> Spec:
    """x.unfold(dim, size, step): windows along rows when dim is 0 (window w holds rows
    w*step .. w*step + size - 1, like sliding_window_view), else rows stay."""
    x = call.x()
    dim, size, step = (int(call.arg(k, n)) for k, n in ((1, "dimension"), (2, "size"),
                                                          (3, "step")))
    params = json.dumps({"dim": dim, "size": size, "step": step})
    if x.ndim and dim % x.ndim == 0:
        return one_input(call, outs, lambda i, n: window_segments(i, n, size, step), params)
    return one_input(call, outs, lambda i, n: [identity(i, n)], params)


@rule("torch", "diff", spaces="torch Tensor")
def _diff(call: Call, outs: list[Any]) -> Spec:
    x = call.x()
    order, dim = int(call.arg(1, "n", 1)), int(call.arg(2, "dim", -1))
    if call.arg(3, "prepend") is not None or call.arg(4, "append") is not None:
        raise NotUnderstood
    if x.ndim and dim % x.ndim == 0:  # row r <- rows r .. r + n
        return one_input(call, outs,
                         lambda i, n: [range_segment(i, j, 1, n) for j in range(order + 1)],
                         json.dumps({"n": order, "dim": dim}))
    return one_input(call, outs, lambda i, n: [identity(i, n)], json_axis(dim))
